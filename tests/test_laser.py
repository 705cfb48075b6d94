"""Laser: gradients reach the suffix, experts, router and projections but never the frozen LLM or SASRec; the LLM
reads prefix + text + suffix under left padding with the suffix last; gate weights sum to 1; the balance loss is
alpha under perfectly balanced top-1 routing; the faithful and masked routers behave as documented; the item
matrix built in chunks equals the unchunked one; stage 1 is a cached artifact that stage 2 starts from; and the
Amazon 2018 source applies the paper's processing (more than 3 interactions, then a seeded 20% user sample)."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import build_on, synthetic_corpus

from zoo.data.sources.amazon2018 import process
from zoo.errors import ConfigError, DataError
from zoo.models.laser import ITCHead, Laser
from zoo.modules.llm import INJECT
from zoo.modules.mformer import MFormer, MFormerConfig, Router, load_balance_loss

TINY = [*Laser.test_overrides, "data.num_workers=0", "data.batch_size=8", "data.eval_batch_size=8"]
FIXTURES = Path(__file__).with_name("fixtures") / "amazon2018"


def laser(*overrides, loss: str | None = None, **kw):
    """``laser_ml100k`` at test size; ``loss="ce"`` swaps in the full-catalogue variant's loss section."""
    if loss is None:
        return build_on("laser_ml100k", [*TINY, *overrides], **kw)
    from omegaconf import OmegaConf, open_dict

    from zoo.build import build
    from zoo.config import compose

    cfg = compose("laser_ml100k", [o for o in [*TINY, *overrides] if not o.startswith("loss.")])
    with open_dict(cfg):
        cfg.loss = OmegaConf.create({"name": loss})
    return build(cfg, corpus=synthetic_corpus(**kw))


def first(datamodule, split="train"):
    loader = datamodule.train_dataloader() if split == "train" else datamodule.test_dataloader()
    return next(iter(loader))


# -- gradients ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("loss", [None, "ce"])  # None: the recipe's sampled softmax
def test_gradients_reach_suffix_experts_router_projections_but_not_the_llm_or_sasrec(loss):
    model, datamodule = laser(loss=loss)
    model.train()
    sasrec_before = model.cf_items.clone()
    llm_before = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    model.compute_loss(first(datamodule)).backward()
    for name, param in [
        ("suffix", model.suffix),
        ("experts", model.mformer.experts),
        ("router", model.mformer.router.gate.weight),
        ("item_proj", model.mformer.item_proj.weight),
        ("llm_proj", model.llm_proj.weight),
    ]:
        assert param.grad is not None and float(param.grad.abs().sum()) > 0, name
    assert all(not p.requires_grad and p.grad is None for p in model.backbone.parameters())
    assert not model.cf_items.requires_grad and "cf_items" not in dict(model.named_parameters())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    optimizer.step()
    assert torch.equal(model.cf_items, sasrec_before)
    assert all(torch.equal(p, llm_before[n]) for n, p in model.backbone.named_parameters())
    if loss == "ce":  # the full-catalogue variant scores against a matrix that carries no gradient
        assert not model.item_matrix().requires_grad


def test_sampled_items_are_encoded_with_gradients_and_scored_like_the_matrix_in_eval():
    model, datamodule = laser()
    batch = first(datamodule)
    model.train()
    user, _ = model.user_embedding(batch)
    items = torch.tensor([[1, 2, 3], [3, 4, 4]])
    scores = model.score_items(user[:2], items)
    assert scores.requires_grad
    (grad,) = torch.autograd.grad(scores.sum(), model.llm_proj.weight, retain_graph=True)
    assert float(grad.abs().sum()) > 0
    model.eval()
    with torch.no_grad():
        state = model.user_state(batch)[:2]
        fresh = (
            torch.einsum(
                "nd,nkd->nk",
                state,
                torch.nn.functional.normalize(model.encode_items(items.flatten()), dim=-1).view(2, 3, -1),
            )
            / model.cfg.model.tau
        )
        assert torch.allclose(model.score_items(state, items), fresh, atol=1e-5)


# -- the LLM input ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prefix, queries", [("cf", 2), ("learned", 2), ("none", 0)])
def test_llm_input_is_prefix_text_suffix_under_left_padding(prefix, queries):
    model, datamodule = laser(f"model.prefix={prefix}", "data.max_len=6")
    batch = first(datamodule)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    texts = [model.prompt_encoder.text(h) for h in batch["history"].tolist()]
    lengths = torch.tensor([queries + len(t) + 1 for t in texts])
    assert torch.equal(mask.sum(1), lengths)
    assert len(set(lengths.tolist())) > 1, "the batch should mix prompt lengths"
    assert bool((mask[:, -1] == 1).all()) and bool((ids[:, -1] == INJECT).all())  # the suffix is last in every row
    for row, text in zip(range(len(ids)), texts):
        real = ids[row][mask[row].bool()].tolist()
        assert real == [INJECT] * queries + text + [INJECT]
        assert mask[row, : len(ids[row]) - len(real)].sum() == 0  # padding on the left only
    seen = {}
    original = model.backbone.model.get_decoder().forward

    def spy(*args, **kwargs):
        seen["embeds"] = kwargs["inputs_embeds"]
        return original(*args, **kwargs)

    model.backbone.model.get_decoder().forward = spy
    with torch.no_grad():
        model.user_embedding(batch)
    assert seen["embeds"].shape[:2] == ids.shape
    if queries:  # the injected prefix vectors sit at the first real positions
        row = int(lengths.argmin())
        start = ids.shape[1] - int(lengths[row])
        assert not torch.allclose(seen["embeds"][row, start], seen["embeds"][row, start + queries])


def test_the_oldest_titles_are_dropped_beyond_the_prompt_budget():
    model, datamodule = laser("model.max_prompt_tokens=60", "data.max_len=8")
    batch = first(datamodule)
    for history in batch["history"].tolist():
        text = model.prompt_encoder.text(history)
        assert len(text) <= 60 and text[: len(model.user_head)] == model.user_head
        newest = [i for i in history if i][-1]
        assert text[-len(model.title_tokens[newest]) :] == model.title_tokens[newest]


# -- router, gates, balance -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["faithful", "masked"])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_gate_weights_sum_to_one(variant, k):
    torch.manual_seed(0)
    router = Router(8, 4, variant, 0.01)
    items = torch.randn(5, 6, 8)
    mask = torch.rand(5, 6) > 0.3
    mask[:, -1] = True
    routing = router(items, mask, k)
    assert routing.experts.shape == routing.gates.shape == (5, k)
    assert torch.allclose(routing.gates.sum(-1), torch.ones(5)) and bool((routing.gates > 0).all())
    assert len({tuple(sorted(r)) for r in routing.experts.tolist()}) >= 1
    assert all(len(set(r)) == k for r in routing.experts.tolist())  # k distinct experts


@pytest.mark.parametrize("variant", ["faithful", "masked"])
def test_the_balance_loss_is_alpha_for_perfectly_balanced_top1_routing(variant):
    experts, alpha = 4, 0.01
    router = Router(experts, experts, variant, alpha)
    with torch.no_grad():
        router.gate.weight.copy_(torch.eye(experts) * 5.0)
        router.gate.bias.zero_()
    items = torch.eye(experts).repeat(2, 1).view(2, experts, experts)  # every expert wins one item of each user
    routing = router(items, torch.ones(2, experts, dtype=torch.bool), 1)
    assert float(routing.balance) == pytest.approx(alpha, rel=1e-6)
    # all load on one expert: E times larger than balanced in the limit of confident routing
    skewed = torch.zeros(2, experts, experts)
    skewed[..., 0] = 1.0
    assert float(router(skewed, torch.ones(2, experts, dtype=torch.bool), 1).balance) > 2 * alpha
    probs = torch.full((3, 5, experts), 1.0 / experts)
    picks = torch.arange(15).remainder(experts).view(3, 5, 1)[:, :4]
    probs = probs[:, :4]
    assert float(load_balance_loss(probs, picks, torch.ones(3, 4, dtype=torch.bool), alpha)) == pytest.approx(alpha)


def test_the_faithful_router_averages_over_padding_and_softmaxes_probabilities():
    router_f, router_m = Router(3, 3, "faithful", 0.01), Router(3, 3, "masked", 0.01)
    router_m.load_state_dict(router_f.state_dict())
    with torch.no_grad():
        router_f.gate.weight.copy_(torch.eye(3))
        router_f.gate.bias.zero_()
        router_m.gate.weight.copy_(torch.eye(3))
        router_m.gate.bias.zero_()
    item = torch.tensor([[[3.0, 1.0, 0.0]]])
    padded = torch.cat([torch.randn(1, 4, 3), item], dim=1)
    mask = torch.tensor([[False] * 4 + [True]])
    probs = torch.tensor([3.0, 1.0, 0.0]).softmax(-1)
    f = router_f(padded, mask, 2)
    assert f.experts.tolist() == [[0, 1]]
    assert torch.allclose(f.gates[0], (probs[:2] / 5).softmax(-1))  # mean over 5 positions, softmax of probs
    m = router_m(padded, mask, 2)
    assert torch.allclose(m.gates[0], torch.tensor([3.0, 1.0]).softmax(-1))  # masked mean of logits
    assert torch.allclose(router_m(item, torch.ones(1, 1, dtype=torch.bool), 2).gates, m.gates)  # padding-free
    assert not torch.allclose(router_f(item, torch.ones(1, 1, dtype=torch.bool), 2).gates, f.gates)


@pytest.mark.parametrize("variant", ["faithful", "masked"])
def test_both_router_variants_train_end_to_end(variant):
    model, datamodule = laser(f"model.mformer_router={variant}")
    model.train()
    loss = model.compute_loss(first(datamodule))
    loss.backward()
    assert torch.isfinite(loss) and float(model.mformer.router.gate.weight.grad.abs().sum()) > 0


def test_mformer_mixes_the_selected_experts_and_has_query_ffns_and_cross_attention_every_second_layer():
    m = MFormerConfig(
        mformer_hidden=16,
        mformer_layers=4,
        mformer_heads=2,
        mformer_ffn=32,
        num_experts=3,
        num_queries=5,
        mformer_dropout=0.0,
    )
    torch.manual_seed(0)
    mformer = MFormer(m, 8, text_vocab=50).eval()
    assert [layer.cross_attention is not None for layer in mformer.layers] == [True, False, True, False]
    assert all(layer.ffn_text is not None and layer.ffn_text is not layer.ffn_query for layer in mformer.layers)
    cf, mask = torch.randn(2, 6, 8), torch.ones(2, 6, dtype=torch.bool)
    out, balance = mformer(cf, mask, 2)
    assert out.shape == (2, 5, 16) and balance.ndim == 0
    routing = mformer.route(mformer.item_proj(cf), mask, 2)
    # the output is the gate-weighted sum of each selected expert's own pass
    single = []
    for b in range(2):
        parts = []
        for j, e in enumerate(routing.experts[b].tolist()):
            saved = mformer.experts.data.clone()
            mformer.experts.data[:] = saved[e]  # every expert = expert e: top-1 output is expert e's pass
            parts.append(routing.gates[b, j] * mformer(cf[b : b + 1], mask[b : b + 1], 1)[0][0])
            mformer.experts.data.copy_(saved)
        single.append(sum(parts))
    assert torch.allclose(out, torch.stack(single), atol=1e-5)
    text = mformer.encode_text(torch.randint(0, 50, (2, 7)), torch.ones(2, 7, dtype=torch.bool))
    assert text.shape == (2, 7, 16)


def test_itc_takes_the_max_over_query_tokens():
    torch.manual_seed(0)
    head = ITCHead(8, 4, 0.07)
    queries, text = torch.randn(3, 5, 8), torch.randn(3, 8)
    q = torch.nn.functional.normalize(head.behavior_proj(queries), dim=-1)
    t = torch.nn.functional.normalize(head.text_proj(text), dim=-1)
    sim = torch.stack([torch.stack([(q[b] @ t[c]).max() for c in range(3)]) for b in range(3)]) / 0.07
    labels = torch.arange(3)
    ce = torch.nn.functional.cross_entropy
    expected = 0.5 * (ce(sim, labels, label_smoothing=0.1) + ce(sim.T, labels, label_smoothing=0.1))
    assert float(head(queries, text, 0.1)) == pytest.approx(float(expected), rel=1e-5)


# -- item matrix, stages ----------------------------------------------------------------------------------------------
def test_the_chunked_item_matrix_equals_the_unchunked_one():
    model, _ = laser()
    one = model.build_item_matrix(chunk_size=1)
    three = model.build_item_matrix(chunk_size=3)
    whole = model.build_item_matrix(chunk_size=10_000)
    assert whole.shape == (model.num_items + 1, model.suffix.shape[0])
    assert torch.allclose(one, whole, atol=1e-5) and torch.allclose(three, whole, atol=1e-5)
    assert torch.allclose(whole[1:].norm(dim=-1), torch.ones(model.num_items)) and float(whole[0].abs().sum()) == 0


def test_the_item_matrix_is_recomputed_after_each_epoch_start():
    model, datamodule = laser()
    first_matrix = model.item_matrix()
    assert model.item_matrix() is first_matrix  # cached within an epoch
    with torch.no_grad():
        model.suffix.add_(1.0)
    model.on_train_epoch_start()
    assert not torch.allclose(model.item_matrix(), first_matrix)


def test_stage_two_starts_from_the_cached_stage_one_mformer():
    stages = {}
    from zoo.build import build
    from zoo.config import compose

    cfg = compose("laser_ml100k", TINY)
    model, _ = build(cfg, corpus=synthetic_corpus(), stages=stages)
    assert set(stages) == {"retriever", "laser_mformer"}
    saved = torch.load(stages["laser_mformer"].file("mformer.pt"), weights_only=True)
    assert "layers.0.ffn_text.inner.weight" in saved and "word_embeddings.weight" in saved  # the text side of ITC
    own = model.mformer.state_dict()
    assert own.keys() < saved.keys() and all(torch.equal(own[k], saved[k]) for k in own)
    again = {}
    build(cfg, corpus=synthetic_corpus(), stages=again)
    assert again["laser_mformer"].reused and again["retriever"].reused
    assert Laser.stages_for(compose("laser_ml100k", [*TINY, "model.prefix=learned"])) == ()
    assert Laser.stages_for(compose("laser_ml100k", [*TINY, "model.stage1_epochs=0"])) == ("retriever",)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.prefix=image"], "unknown model.prefix 'image'"),
        (["model.lora_r=4"], "frozen"),
        (["model.mformer_router=soft"], "unknown model.mformer_router 'soft'"),
        (["model.top_k_stage1=5"], "model.top_k_stage1 must be in 1..model.num_experts=2"),
        (["model.tau=0"], "model.tau=0"),
    ],
)
def test_bad_settings_are_one_line_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message) as err:
        laser(*overrides, "model.prefix=learned" if overrides[0] != "model.prefix=image" else "model.item_cf=true")
    assert "\n" not in str(err.value)


# -- Amazon 2018 --------------------------------------------------------------------------------------------------
def amazon2018(tmp_path, *overrides):
    from zoo.config import compose
    from zoo.data.loading import load_corpus

    root = tmp_path / "data"
    shutil.copytree(FIXTURES, root / "amazon2018")
    cfg = compose("laser_ml100k", ["data.name=amazon2018_industrial", f"data.root={root}", *overrides])
    return load_corpus(cfg.data), root


def fixture_reviews() -> list[dict]:
    with gzip.open(FIXTURES / "Industrial_and_Scientific_5.json.gz", "rt") as f:
        return [json.loads(line) for line in f]


def test_amazon2018_keeps_users_with_more_than_three_items_then_a_seeded_fifth(tmp_path):
    corpus, _ = amazon2018(tmp_path)
    reviews = fixture_reviews()
    with gzip.open(FIXTURES / "meta_Industrial_and_Scientific.json.gz", "rt") as f:
        described = {json.loads(line)["asin"] for line in f if json.loads(line).get("title")}
    per_user = {}
    for r in reviews:
        if r["asin"] in described:
            per_user.setdefault(r["reviewerID"], []).append(r)
    eligible = {u for u, rows in per_user.items() if len(rows) > 3}
    kept = set(corpus.user_ids)
    assert kept and kept < eligible and 0.05 < len(kept) / len(eligible) < 0.45
    assert all(corpus.lengths()[corpus.user_ids.index(u)] > 3 for u in kept)
    for u in range(corpus.num_users):  # sorted by time, every item described
        rows = sorted(per_user[corpus.user_ids[u]], key=lambda r: r["unixReviewTime"])
        seq = corpus.items[corpus.offsets[u] : corpus.offsets[u + 1]]
        assert [corpus.item_ids[i] for i in seq] == [r["asin"] for r in rows]
    assert all(corpus.item_text["title"][1:]) and "brand" in corpus.item_text and "categories" in corpus.item_text
    same, _ = amazon2018(tmp_path / "again")
    assert same.user_ids == corpus.user_ids  # seeded: the same sample every time
    reviews_file = FIXTURES / "Industrial_and_Scientific_5.json.gz"
    meta_file = FIXTURES / "meta_Industrial_and_Scientific.json.gz"
    assert process("x", reviews_file, meta_file, seed=7).user_ids != corpus.user_ids
    assert set(process("x", reviews_file, meta_file, fraction=1.0).user_ids) == eligible
    with pytest.raises(DataError, match="fraction"):
        process("x", reviews_file, meta_file, fraction=0.0)


def test_amazon2018_missing_files_name_the_url_and_the_place(tmp_path):
    from zoo.config import compose
    from zoo.data.loading import load_corpus

    cfg = compose("laser_ml100k", ["data.name=amazon2018_pets", f"data.root={tmp_path}", "data.download=false"])
    with pytest.raises(DataError) as err:
        load_corpus(cfg.data)
    message = str(err.value)
    assert "\n" not in message and "Pet_Supplies_5.json.gz" in message and str(tmp_path) in message
    assert "download" in message
