"""KAR (knowledge stages, hybrid-expert adaptor, CTR backbones with and without it) on the shared synthetic corpus,
with a tiny Llama built from a config for generation and the bundled MiniLM as the knowledge encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import SHRINK, synthetic_corpus
from sklearn.metrics import log_loss, roc_auc_score

from zoo.build import build
from zoo.config import compose
from zoo.data.ctr import ctr_split_positions, knowledge_lengths, user_split
from zoo.errors import ConfigError
from zoo.models.kar import knowledge
from zoo.modules.experts import HybridExpertAdaptor, SingleGateMoE, build_adaptor

BACKBONES = ("din", "deepfm", "dcnv2", "autoint")
TINY = (
    "model.embed_dim=8",
    "model.mlp=[16,8]",
    "model.kar_llm=tiny-llama",
    "model.kar_max_new_tokens=4",
    "model.kar_hidden=16",
    "model.kar_shared=1",
    "model.kar_specific=2",
)


def kar_config(backbone: str, tmp_path, *extra: str):
    return compose(
        f"kar_{backbone}_ml100k", [*SHRINK, f"run_root={tmp_path}", "logger.name=none", "seed=0", *TINY, *extra]
    )


@pytest.fixture(scope="module")
def corpus():
    return synthetic_corpus()


@pytest.fixture(scope="module")
def kar_din(corpus, tmp_path_factory):
    cfg = kar_config("din", tmp_path_factory.mktemp("kar"))
    model, dm = build(cfg, corpus=corpus)
    return cfg, model, dm


def first_batch(dm, split="train"):
    loader = {"train": dm.train_dataloader, "val": dm.val_dataloader, "test": dm.test_dataloader}[split]()
    return next(iter(loader))


@pytest.mark.parametrize("kind", ["hybrid", "single_gate_moe"])
def test_each_towers_gate_sums_to_one(kind):
    torch.manual_seed(0)
    adaptor = build_adaptor(kind, 12, 12, 16, 8, 2, 3)
    g_r, g_f = adaptor.gates(torch.randn(5, 12), torch.randn(5, 12))
    for gate in (g_r, g_f):
        assert torch.allclose(gate.sum(-1), torch.ones(5), atol=1e-6)
        assert bool((gate >= 0).all())
    if kind == "hybrid":
        assert g_r.shape == (5, 5) and not torch.allclose(g_r, g_f)  # 2 shared + 3 dedicated, one gate per tower


def test_hybrid_towers_share_only_the_shared_experts():
    torch.manual_seed(0)
    adaptor = HybridExpertAdaptor(6, 6, hidden=8, out=4, n_shared=1, n_specific=2)
    x_r, x_f = torch.randn(3, 6), torch.randn(3, 6)
    z_r, z_f = adaptor(x_r, x_f)
    assert z_r.shape == z_f.shape == (3, 4)
    # a dedicated fact expert changes z_f only
    with torch.no_grad():
        adaptor.fact[0][0].weight.add_(1.0)
    z_r2, z_f2 = adaptor(x_r, x_f)
    assert torch.equal(z_r, z_r2) and not torch.allclose(z_f, z_f2)
    assert isinstance(build_adaptor("single_gate_moe", 6, 6, 8, 4, 1, 2), SingleGateMoE)
    with pytest.raises(ConfigError, match="unknown model.kar_adaptor"):
        build_adaptor("nope", 6, 6, 8, 4, 1, 2)


def test_the_user_prompt_holds_no_interaction_at_or_after_the_first_target(corpus):
    spec = knowledge.load_domain("movies")
    keys, prompts, _ = knowledge.user_prompts(corpus, spec, prefix=30)
    cut = knowledge_lengths(corpus, 30)
    first_target = np.full(corpus.num_users, np.iinfo(np.int64).max)
    user_of = np.repeat(np.arange(corpus.num_users), corpus.lengths())
    for split in ("train", "val", "test"):
        pos = ctr_split_positions(corpus, split, "users", 30)
        np.minimum.at(first_target, user_of[pos], pos - corpus.offsets[user_of[pos]])
    titles = corpus.item_text["title"]
    assert len(prompts) == corpus.num_users
    for u, prompt in enumerate(prompts):
        assert first_target[u] == cut[u], "every rating from n_u on is an example, none before"
        seq = corpus.sequence(u).tolist()
        shown = [i for i in seq if f'"{titles[i]}"' in prompt]
        assert shown == seq[: cut[u]], f"user {u}: the prompt holds {shown}, expected the first {cut[u]}"
        assert prompt.count(" stars;") == cut[u]
        assert "aged" not in prompt  # the synthetic users have no occupation: no profile phrase
    corpus.user_features["occupation"] = ["writer"] * corpus.num_users
    try:
        _, with_profile, _ = knowledge.user_prompts(corpus, spec, prefix=30)
    finally:
        del corpus.user_features["occupation"]
    assert with_profile[0].startswith("Given a female user who is aged 18 and writer")
    assert with_profile[0].split("below. ", 1)[1] == prompts[0].split("below. ", 1)[1]


def test_knowledge_stage_is_cached_and_its_key_covers_the_decoding_settings(kar_din, corpus):
    from zoo.stages import resolve

    cfg, model, _ = kar_din
    artifact = resolve("kar_knowledge", cfg, corpus)
    assert artifact.reused  # built once by the fixture's build
    record = knowledge.load_knowledge(artifact)
    assert len(record["users"]) == corpus.num_users and len(record["items"]) == corpus.num_items
    other = compose(cfg.recipe, [*SHRINK, *TINY, "model.kar_no_repeat_ngram=0"])
    other.data.cache_dir = cfg.data.cache_dir
    assert knowledge.KARKnowledgeStage().inputs(other, corpus) != knowledge.KARKnowledgeStage().inputs(cfg, corpus)
    users, items = knowledge.load_vectors(resolve("kar_vectors", cfg, corpus))
    assert users.shape == (corpus.num_users, 384) and items.shape == (corpus.num_items + 1, 384)
    assert not items[0].any() and np.isfinite(users).all()


def test_knowledge_shipped_for_the_same_settings_is_taken_and_the_rest_generated(
    kar_din, corpus, tmp_path, monkeypatch, kar_prompts
):
    import json

    from zoo.stages import resolve, stage_root

    cfg, _, _ = kar_din
    generated = next((stage_root(cfg) / "kar_knowledge" / "texts").glob("*.jsonl"))  # the fixture's text cache
    lines = generated.read_text().splitlines()
    first, last = json.loads(lines[0]), json.loads(lines[-1])
    lines[0] = json.dumps({**first, "text": "SHIPPED"})
    shipped = tmp_path / "shipped" / generated.name
    shipped.parent.mkdir()
    shipped.write_text("\n".join(lines[:-1]) + "\n")  # every record but the last one
    before = shipped.read_text()
    other = compose(cfg.recipe, [*SHRINK, *TINY, f"model.kar_texts_dir={shipped.parent}"])
    other.data.cache_dir = str(tmp_path / "cache")
    record = knowledge.load_knowledge(resolve("kar_knowledge", other, corpus))
    texts = {f"user:{k}": v["text"] for k, v in record["users"].items()}
    texts.update({f"item:{k}": v["text"] for k, v in record["items"].items()})
    assert texts[first["key"]] == "SHIPPED" and texts[last["key"]] == "NEW" and len(kar_prompts) == 1
    assert shipped.read_text() == before  # never written
    monkeypatch.setattr(knowledge, "generation_settings", lambda m: {"other": "settings"})
    other.data.cache_dir = str(tmp_path / "cache2")
    knowledge.load_knowledge(resolve("kar_knowledge", other, corpus))  # no shipped file for these settings
    assert len(kar_prompts) == 1 + len(lines)


def test_the_augmented_vector_has_the_stated_size(kar_din, corpus, tmp_path):
    _, model, dm = kar_din
    batch = first_batch(dm)
    z = model.augmented(batch)
    assert [tuple(v.shape) for v in z] == [(len(batch["user"]), 8)] * 2  # [z_r ; z_f] = 2 x embed_dim
    field_model, fdm = build(kar_config("deepfm", tmp_path), corpus=corpus)
    plain, _ = build(kar_config("deepfm", tmp_path, "model.kar=false"), corpus=corpus)
    assert field_model.fields(first_batch(fdm)).shape[1] == plain.num_fields + 2  # two extra fields
    one, _ = build(kar_config("deepfm", tmp_path, "model.kar_towers=reasoning"), corpus=corpus)
    assert one.num_fields == plain.num_fields + 1


@pytest.mark.parametrize("backbone", BACKBONES)
def test_with_the_adaptor_off_the_backbone_is_unchanged(backbone, corpus, tmp_path, monkeypatch):
    torch.manual_seed(0)
    with_kar, dm = build(kar_config(backbone, tmp_path), corpus=corpus)
    monkeypatch.setattr(knowledge.PenalizedHFGenerator, "generate", lambda *a: pytest.fail("LLM called"))
    monkeypatch.setattr(knowledge, "load_text_encoder", lambda *a, **k: pytest.fail("encoder called"))
    alone, _ = build(kar_config(backbone, tmp_path, "model.kar=false"), corpus=corpus)
    own = compose(f"{backbone}_ml100k", [*SHRINK, "seed=0", "model.embed_dim=8", "model.mlp=[16,8]"])
    baseline, _ = build(own, corpus=corpus)
    assert alone.adaptor is None and not any("knowledge" in n for n in dict(alone.named_buffers()))
    shapes = {n: p.shape for n, p in alone.state_dict().items()}
    assert shapes == {n: p.shape for n, p in baseline.state_dict().items()}
    assert {
        n for n in with_kar.state_dict() if not n.startswith(("adaptor.", "user_knowledge", "item_knowledge"))
    } == set(shapes)
    # the same weights give the same logits as the backbone's own recipe: nothing of KAR is left in the path
    baseline.load_state_dict(alone.state_dict())
    alone.eval(), baseline.eval()
    batch = first_batch(dm)
    with torch.no_grad():
        assert torch.equal(alone.predict(batch), baseline.predict(batch))
        if backbone != "din":  # the shared fields of the KAR model are the backbone's fields
            shared = {
                n: p
                for n, p in alone.state_dict().items()
                if n.split(".")[0] in ("item_embedding", "item_fields", "user_fields", "rating_embedding")
            }
            with_kar.load_state_dict(shared, strict=False)
            assert torch.equal(with_kar.fields(batch)[:, : alone.num_fields], alone.fields(batch))


def test_the_encoder_and_the_llm_are_not_called_in_training_step(kar_din, corpus, monkeypatch):
    from zoo.run import run

    cfg, _, _ = kar_din
    calls = []
    monkeypatch.setattr(knowledge, "load_text_encoder", lambda *a, **k: calls.append("encoder"))
    monkeypatch.setattr(knowledge, "encode_texts", lambda *a, **k: calls.append("encode"))
    monkeypatch.setattr(knowledge.PenalizedHFGenerator, "generate", lambda *a: calls.append("llm"))
    model, dm = build(cfg, corpus=corpus)  # the stages are reused from the cache
    model.train()
    for batch_idx, batch in zip(range(2), dm.train_dataloader()):
        loss = model.training_step(batch, batch_idx)
        loss.backward()
    assert calls == []
    assert model.adaptor.gate_r.weight.grad is not None and model.user_knowledge.grad is None
    metrics = run(cfg, corpus=corpus)
    assert calls == [] and "test/auc" in metrics


def test_kar_needs_the_users_split(corpus, tmp_path):
    with pytest.raises(ConfigError, match="ctr_split=users"):
        build(kar_config("din", tmp_path, "data.ctr_split=leave_one_out"), corpus=corpus)
    with pytest.raises(ConfigError, match="unknown model.kar_domain"):
        knowledge.load_domain("cars")


def test_auc_logloss_gauc_on_held_out_users_match_sklearn(kar_din, corpus):
    cfg, model, dm = kar_din
    split = user_split(corpus.num_users)
    model.eval()
    preds, labels, users = [], [], []
    evaluator = model.test_metrics
    evaluator.reset()
    with torch.no_grad():
        for batch in dm.test_dataloader():
            evaluator.update(model, batch)
            preds.append(model.predict(batch))
            labels.append(batch["label"])
            users.append(batch["user"])
    got = {k: float(v) for k, v in evaluator.compute().items()}
    p, y, u = torch.cat(preds).double().numpy(), torch.cat(labels).numpy(), torch.cat(users).numpy()
    assert set(split[u]) == {2}, "the test examples are the held-out users' only"
    assert not set(u) & set(np.flatnonzero(split == 0))
    assert got["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-9)
    assert got["logloss"] == pytest.approx(log_loss(y, 1 / (1 + np.exp(-p))), abs=1e-6)
    per_user, weights = [], []
    for user in np.unique(u):
        rows = u == user
        if len(set(y[rows])) == 2:
            per_user.append(roc_auc_score(y[rows], p[rows]))
            weights.append(rows.sum())
    assert per_user, "the synthetic test users have both labels"
    assert got["gauc"] == pytest.approx(np.average(per_user, weights=weights), abs=1e-9)
