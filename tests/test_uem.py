"""UEM: the user embedding module gives K soft prompts whatever the history length, the prompts enter the LM through
the shared injection path with gradients reaching the module and the LM's trainable weights, the sentence encoder
is never called while training (cached vectors), soft and text histories give the expected input lengths, and the
preferred-genre label is built from the training part only."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import SHRINK, build_on, synthetic_corpus

from zoo.errors import ConfigError
from zoo.metrics.multilabel import multilabel_metrics, sample_f1
from zoo.models.uem import PAPER_MODULE, GenreDataModule, genre_examples, genre_vocabulary
from zoo.modules.llm import INJECT
from zoo.modules.user_embedding import UserEmbeddingConfig, UserEmbeddingModule

SMALL = [
    "model.text_fields=[title]",
    "model.module_dim=32",
    "model.module_layers=1",
    "model.num_tokens=4",
    "model.tiny_hidden=32",
    "data.num_workers=0",
    "data.batch_size=8",
]
TINY = [*PAPER_MODULE, *SMALL]  # the recipes ship the zoo's additions; these tests turn each on by itself
GENRES = [*SMALL, "model.label_window=2", "model.min_history=1", "model.max_prompt_tokens=128"]


def first(datamodule, split="train"):
    loader = datamodule.train_dataloader() if split == "train" else datamodule.test_dataloader()
    return next(iter(loader))


@pytest.mark.parametrize("length", [1, 5, 50, 200])
def test_the_module_gives_k_soft_prompts_whatever_the_history_length(length):
    torch.manual_seed(0)
    module = UserEmbeddingModule(UserEmbeddingConfig(num_tokens=6, module_dim=32, module_layers=1), 16, 24, 200, True)
    history = torch.randn(3, length, 16)
    mask = torch.ones(3, length, dtype=torch.bool)
    mask[0, : length - 1] = False  # one real item, left-padded
    tokens, token_mask = module(history, mask, torch.randint(0, 6, (3, length)))
    assert tokens.shape == (3, 6, 24) and bool(token_mask.all())
    assert torch.isfinite(tokens).all()
    per_item = UserEmbeddingModule(UserEmbeddingConfig(tokens="per_item", module_dim=32), 16, 24, 200, False)
    tokens, token_mask = per_item(history, mask)
    assert tokens.shape == (3, length, 24) and token_mask.sum(1).tolist() == [1, length, length]


def test_soft_prompts_enter_on_the_scale_of_the_token_embeddings():
    torch.manual_seed(0)
    history, mask = torch.randn(4, 7, 16) * 30, torch.ones(4, 7, dtype=torch.bool)
    scaled = UserEmbeddingModule(UserEmbeddingConfig(num_tokens=3, module_dim=32), 16, 24, 10, False, 0.05)
    tokens, _ = scaled(history, mask)
    assert torch.allclose(tokens.pow(2).mean(-1).sqrt(), torch.full((4, 3), 0.05), rtol=1e-3)
    assert scaled.gain.requires_grad  # the scale is learned from there
    free = UserEmbeddingModule(UserEmbeddingConfig(num_tokens=3, module_dim=32, prompt_scale="free"), 16, 24, 10, False)
    free.load_state_dict({k: v for k, v in scaled.state_dict().items() if k != "gain"})
    raw, _ = free(history, mask)
    assert raw.pow(2).mean(-1).sqrt().min() > 0.2  # the projection's own scale (LayerNorm then Linear)
    with pytest.raises(ConfigError, match="prompt_scale"):
        UserEmbeddingModule(UserEmbeddingConfig(prompt_scale="tiny"), 8, 8, 8, False)


def test_uem_starts_its_soft_prompts_at_the_rms_of_the_lms_token_embeddings():
    model, _ = build_on("uem_ml100k", [*TINY, *SHRINK])
    table = model.backbone.model.get_input_embeddings().weight
    assert float(model.user_module.gain) == pytest.approx(float(table.pow(2).mean().sqrt()), rel=1e-5)


def test_padding_does_not_change_the_soft_prompts():
    torch.manual_seed(0)
    module = UserEmbeddingModule(UserEmbeddingConfig(num_tokens=3, module_dim=32, module_dropout=0.0), 8, 16, 20, False)
    module.eval()
    items = torch.randn(1, 4, 8)
    short, _ = module(items, torch.ones(1, 4, dtype=torch.bool))
    padded = torch.cat([torch.randn(1, 6, 8), items], dim=1)  # 6 padding slots with garbage vectors
    mask = torch.cat([torch.zeros(1, 6, dtype=torch.bool), torch.ones(1, 4, dtype=torch.bool)], dim=1)
    long, _ = module(padded, mask)
    assert torch.allclose(short, long, atol=1e-5)


@pytest.mark.parametrize("tokens", ["queries", "per_item"])
def test_the_alignment_term_is_a_catalogue_softmax_of_the_mean_soft_prompt(tokens):
    model, datamodule = build_on("uem_ml100k", [*TINY, f"model.tokens={tokens}", "model.align_weight=0.5"])
    model.train()
    batch = first(datamodule)
    torch.manual_seed(0)
    prompts = model.soft_prompts(batch)
    # by hand: each row's soft prompts averaged, cosine to every item's centred mean title-token embedding
    table = model.backbone.model.get_input_embeddings().weight
    titles = [table[torch.tensor(q)].mean(0) for q in model.titles.quoted[1:]]
    items = torch.stack(titles)
    items = items - items.mean(0)
    counts = [model.cfg.model.num_tokens] * len(batch["target"])
    if tokens == "per_item":
        counts = (batch["history"] > 0).sum(1).tolist()
    users = torch.stack([chunk.mean(0) for chunk in prompts.split(counts)])
    cos = torch.nn.functional.normalize(users, dim=-1) @ torch.nn.functional.normalize(items, dim=-1).T
    expected = torch.nn.functional.cross_entropy(cos / 0.07, batch["target"] - 1)
    assert torch.allclose(model.alignment_loss(batch, prompts), expected, rtol=1e-4)
    # the training loss is the LM's plus the weighted term, and the term's gradient reaches the module
    model.zero_grad()
    model.alignment_loss(batch, model.soft_prompts(batch)).backward()
    assert float(model.user_module.project_in.weight.grad.abs().sum()) > 0
    model.eval()  # no dropout: the same prompts for both calls
    with torch.no_grad():
        model.cfg.model.align_weight = 0.5
        both = model.compute_loss(batch)
        model.cfg.model.align_weight = 0.0
        alone = model.compute_loss(batch)
        term = model.alignment_loss(batch, model.soft_prompts(batch))
    assert torch.allclose(both, alone + 0.5 * term, rtol=1e-5) and float(term) > 0
    with pytest.raises(ConfigError, match="align_weight"):
        build_on("uem_ml100k", [*TINY, "model.align_weight=-1"])


def test_the_popularity_feature_adds_a_learned_weight_times_the_training_part_log_count():
    """``model.align_popularity``: the alignment logits gain ``popularity_scale * log(1 + count)``, the count taken
    from the histories before the validation targets only (a user's last two items never count); the scale starts
    at 0 and learns; without the alignment term the setting is refused."""
    model, datamodule = build_on("uem_ml100k", [*TINY, "model.align_weight=1", "model.align_popularity=true"])
    corpus = datamodule.corpus
    expected = np.zeros(corpus.num_items + 1)
    for u in range(corpus.num_users):
        seq = corpus.items[corpus.offsets[u] : corpus.offsets[u + 1]]
        if len(seq) >= 3:
            np.add.at(expected, seq[:-2], 1)
    assert np.allclose(model.item_log_count.numpy(), np.log1p(expected[1:]))
    batch = first(datamodule)
    model.eval()
    with torch.no_grad():
        prompts = model.soft_prompts(batch)
        base = model.alignment_logits(batch, prompts)  # scale 0: the cosine term alone
        model.popularity_scale.fill_(0.5)
        both = model.alignment_logits(batch, prompts)
    assert torch.allclose(both - base, (0.5 * model.item_log_count).expand_as(base), atol=1e-5)
    model.popularity_scale.data.zero_()
    model.zero_grad()
    model.alignment_loss(batch, model.soft_prompts(batch)).backward()
    assert float(model.popularity_scale.grad.abs()) > 0
    with pytest.raises(ConfigError, match="align_popularity"):
        build_on("uem_ml100k", [*TINY, "model.align_popularity=true"])


def test_the_text_item_side_maps_each_items_sentence_vector_into_the_lm_space():
    """``model.align_items=text``: the alignment term's items are a learned linear map of the cached sentence-encoder
    vectors (not the title tokens), trained by the term; a bad choice or a missing term is one line."""
    model, datamodule = build_on("uem_ml100k", [*TINY, "model.align_weight=1", "model.align_items=text"])
    batch = first(datamodule)
    model.eval()
    with torch.no_grad():
        prompts = model.soft_prompts(batch)
        users = model.user_vectors(batch, prompts)
        items = model.item_vectors[1:] @ model.align_item_proj.weight.T
        cos = torch.nn.functional.normalize(users, dim=-1) @ torch.nn.functional.normalize(items, dim=-1).T
        assert torch.allclose(model.alignment_logits(batch, prompts), cos / 0.07, rtol=1e-4, atol=1e-5)
    model.zero_grad()
    model.alignment_loss(batch, model.soft_prompts(batch)).backward()
    assert float(model.align_item_proj.weight.grad.abs().sum()) > 0
    with pytest.raises(ConfigError, match="align_items must be one of"):
        build_on("uem_ml100k", [*TINY, "model.align_weight=1", "model.align_items=ids"])
    with pytest.raises(ConfigError, match="align_items=text"):
        build_on("uem_ml100k", [*TINY, "model.align_items=text"])


def test_bad_module_settings_are_one_line():
    with pytest.raises(ConfigError, match="model.tokens"):
        UserEmbeddingModule(UserEmbeddingConfig(tokens="pooled"), 8, 8, 8, False)
    with pytest.raises(ConfigError, match="multiple of model.module_heads"):
        UserEmbeddingModule(UserEmbeddingConfig(module_dim=30, module_heads=4), 8, 8, 8, False)


@pytest.mark.parametrize("max_len", [3, 8])
def test_every_prompt_holds_k_injected_positions_for_any_history_length(max_len):
    model, datamodule = build_on("uem_ml100k", [*TINY, f"data.max_len={max_len}"], min_len=12, max_len=16)
    batch = first(datamodule)
    assert ((batch["input_ids"] == INJECT).sum(1) == 4).all()
    assert ((batch["prompt_ids"] == INJECT).sum(1) == 4).all()
    assert model.soft_prompts(batch).shape == (4 * len(batch["history"]), 32)


@pytest.mark.parametrize("lora_r", [0, 4])
def test_gradients_reach_the_module_and_the_lm_trainable_weights(lora_r):
    model, datamodule = build_on("uem_ml100k", [*TINY, f"model.lora_r={lora_r}"])
    model.train()
    model.compute_loss(first(datamodule)).backward()
    module_grads = [p.grad for p in model.user_module.parameters()]
    assert all(g is not None for g in module_grads) and sum(float(g.abs().sum()) for g in module_grads) > 0
    lm = dict(model.backbone.named_parameters())
    trainable = {n: p for n, p in lm.items() if p.requires_grad}
    assert trainable and all(p.grad is not None for p in trainable.values())
    # LoRA's B starts at zero, so only B (and, in full training, every weight) has a nonzero gradient at step 0
    assert all(float(p.grad.abs().sum()) > 0 for n, p in trainable.items() if "lora_A" not in n)
    if lora_r:  # LoRA: the adapters train, the base weights stay frozen
        assert all("lora_" in n for n in trainable)
        assert all(p.grad is None for n, p in lm.items() if not p.requires_grad)
    else:
        assert len(trainable) == len(lm)


def test_the_sentence_encoder_is_never_called_in_a_training_step(monkeypatch, run_root, one_thread):
    from zoo.config import compose
    from zoo.run import run

    corpus = synthetic_corpus()
    cfg = compose("uem_ml100k", [*SHRINK, *TINY, f"run_root={run_root}", "logger.name=none", "data.batch_size=8"])
    build_on("uem_ml100k", TINY, corpus=corpus)  # builds (or reuses) the item_embeddings stage

    def forbidden(*args, **kwargs):
        raise AssertionError("the sentence encoder was called")

    import sentence_transformers

    import zoo.modules.text_encoder as text_encoder

    monkeypatch.setattr(text_encoder, "load_sentence_encoder", forbidden)
    monkeypatch.setattr(text_encoder, "encode_items", forbidden)
    monkeypatch.setattr(sentence_transformers.SentenceTransformer, "encode", forbidden)
    monkeypatch.setattr(sentence_transformers.SentenceTransformer, "forward", forbidden)
    model, datamodule = build_on("uem_ml100k", TINY, corpus=corpus)
    model.train()
    assert torch.isfinite(model.training_step(first(datamodule), 0))
    metrics = run(cfg, corpus=corpus)  # two training steps, validation and test: the stage is reused
    assert metrics["stage/item_embeddings/reused"] == 1.0 and "test/ndcg@10" in metrics


def test_the_same_history_as_soft_prompts_or_text_gives_the_expected_input_lengths():
    corpus = synthetic_corpus(min_len=12, max_len=16)
    overrides = [*TINY, "data.max_len=6"]
    uem, uem_data = build_on("uem_ml100k", overrides, corpus=corpus)
    text, text_data = build_on(
        "llmrec_ml100k",
        ["model.tiny_hidden=32", "data.num_workers=0", "data.batch_size=8", "data.max_len=6"],
        corpus=corpus,
    )
    soft_batch, text_batch = first(uem_data), first(text_data)
    assert torch.equal(soft_batch["history"], text_batch["history"])  # the same examples in the same order
    head = len(uem.prompts.text(uem.frame.head(*uem._instruction())))
    tail = len(uem.prompts.text(uem.frame.closing))
    soft_len = soft_batch["prompt_mask"].sum(1)
    text_len = text_batch["prompt_mask"].sum(1)
    titles = torch.tensor([len(text.prompts.title_list(h)) for h in text_batch["history"].tolist()])
    assert (soft_len == head + 4 + tail).all()  # K soft prompts, whatever the history
    assert (text_len == head + titles + tail).all()  # every title's tokens
    assert (text_len - soft_len == titles - 4).all() and (titles > 4).all()
    # the responses (target titles) are the same tokens
    assert torch.equal(soft_batch["attention_mask"].sum(1) - soft_len, text_batch["attention_mask"].sum(1) - text_len)
    per_item, per_item_data = build_on("uem_ml100k", [*overrides, "model.tokens=per_item"], corpus=corpus)
    batch = first(per_item_data)
    assert (batch["prompt_mask"].sum(1) == head + (batch["history"] > 0).sum(1) + tail).all()


def test_uem_ranks_real_items_and_refuses_nothing_it_should_handle():
    model, datamodule = build_on("uem_ml100k", TINY)
    model.eval()
    batch = first(datamodule, "test")
    with torch.no_grad():
        ranked = model.rank(batch, 5)
    assert ranked.shape == (len(batch["target"]), 5) and bool((ranked[:, 0] > 0).all())


# -- task 2: preferred genres -------------------------------------------------------------------------------------
def marked_corpus():
    """The synthetic corpus with every user's last two items (the validation and test targets) replaced by an item
    whose genre appears nowhere else ("leak") and rated 5."""
    corpus = synthetic_corpus(num_items=13, min_len=10, max_len=14)
    leak = corpus.num_items  # item 13
    corpus.items[corpus.items == leak] = 1
    for u in range(corpus.num_users):
        end = corpus.offsets[u + 1]
        corpus.items[end - 2 : end] = leak
        corpus.ratings[end - 2 : end] = 5.0
    corpus.item_text["genres"][leak] = "leak"
    return corpus.validate(), leak


def test_the_genre_label_uses_no_validation_or_test_item():
    corpus, leak = marked_corpus()
    names = genre_vocabulary(corpus)
    ex = genre_examples(corpus, names, window=3, share=0.5, min_history=2)
    assert len(ex) == corpus.num_users
    assert not ex.labels[:, names.index("leak")].any()
    assert (ex.end + 3 == corpus.offsets[ex.user + 1] - 2).all()  # window = the last 3 items of s[:n-2]
    # changing the last two items (and their ratings) changes no label, no input
    corpus.items[corpus.offsets[1:] - 1] = 2
    corpus.ratings[corpus.offsets[1:] - 2] = 1.0
    again = genre_examples(corpus, names, window=3, share=0.5, min_history=2)
    assert np.array_equal(again.labels, ex.labels) and np.array_equal(again.end, ex.end)


def test_the_genre_label_is_the_top_rated_window_items_genres():
    from zoo.data.corpus import Corpus

    corpus = Corpus.from_sequences("g", [[1, 2, 3, 4, 5, 6, 7, 8]], num_items=8)
    corpus.item_text["genres"] = ["", "A", "A", "A B", "B", "A C", "C", "x", "x"]
    corpus.ratings = np.array([5, 5, 5, 5, 2, 3, 5, 5], dtype=np.float32)  # window = items 3..6 (s[:6][-4:])
    names = genre_vocabulary(corpus)
    ex = genre_examples(corpus, names, window=4, share=0.5, min_history=2)
    # top-rated window items: 3 (A B) and 4 (B), both rated 5; B is in both, A in half of them
    assert {names[g] for g in np.flatnonzero(ex.labels[0])} == {"A", "B"}
    assert ex.start[0] == 0 and ex.end[0] == 2  # input = items 1, 2


def test_genre_batches_hold_only_input_items_and_users_are_split():
    corpus, leak = marked_corpus()
    cfg_over = [*GENRES, "model.label_window=3", "data.max_len=20"]
    model, datamodule = build_on("uem_genres_ml100k", cfg_over, corpus=corpus)
    assert isinstance(datamodule, GenreDataModule)
    splits = {s: set(datamodule.examples(s).user.tolist()) for s in ("train", "val", "test")}
    assert not (splits["train"] & splits["test"]) and not (splits["val"] & splits["test"])
    for split in ("train", "test"):
        loader = datamodule.train_dataloader() if split == "train" else datamodule.test_dataloader()
        for batch in loader:
            assert not (batch["history"] == leak).any()


@pytest.mark.parametrize(("history", "tokens"), [("soft", "queries"), ("soft", "per_item"), ("text", "queries")])
def test_genre_predictions_are_distinct_genre_sets(history, tokens):
    over = [*GENRES, f"model.history={history}", f"model.tokens={tokens}", "model.max_genres=2"]
    model, datamodule = build_on("uem_genres_ml100k", over)
    model.eval()
    batch = first(datamodule, "test")
    preds = model.predict_labels(batch)
    assert preds.shape == batch["labels_multi"].shape
    assert ((preds.sum(1) >= 1) & (preds.sum(1) <= 2)).all()
    if history == "text":  # the text baseline writes the history into the prompt, within max_prompt_tokens
        assert (batch["prompt_mask"].sum(1) <= 128).all() and not (batch["prompt_ids"] == INJECT).any()
        assert not hasattr(model, "user_module")
    elif tokens == "queries":
        assert ((batch["prompt_ids"] == INJECT).sum(1) == 4).all()
    else:  # one soft prompt per history item (benchmarks.uem_genres tokens=per_item)
        assert ((batch["prompt_ids"] == INJECT).sum(1) == (batch["history"] > 0).sum(1)).all()


def test_the_genre_response_is_what_the_decoder_can_emit():
    model, datamodule = build_on("uem_genres_ml100k", GENRES)
    batch = first(datamodule)
    labels = batch["labels"]
    for row, target in zip(labels, batch["labels_multi"]):
        tokens = row[row != -100].tolist()
        prefix, emitted = [], []
        for token in tokens:
            assert token in model._allowed(prefix, emitted, False, 6)
            done = model._complete(prefix, emitted)
            if done is not None and token in (model.sep[0], model.backbone.eos_token_id):
                emitted.append(done)
                prefix = []
            else:
                prefix.append(token)
        assert sorted(emitted) == torch.nonzero(target).flatten().tolist()


def test_multilabel_metrics_by_hand():
    preds = torch.tensor([[1, 1, 0], [0, 0, 1], [0, 0, 0]])
    target = torch.tensor([[1, 0, 0], [0, 1, 1], [0, 0, 0]])
    assert sample_f1(preds, target).tolist() == pytest.approx([2 / 3, 2 / 3, 1.0])
    m = multilabel_metrics(preds, target)
    assert m["f1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    assert m["micro_f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))  # tp 2, fp 1, fn 1
    assert m["macro_f1"] == pytest.approx((1.0 + 0.0 + 1.0) / 3)  # label 0: 1, label 1: 0, label 2: 1
    assert m["exact_match"] == pytest.approx(1 / 3)


def test_uem_genres_refuses_title_losses_and_ranking_protocols():
    with pytest.raises(ConfigError, match="loss.name=lml"):
        build_on("uem_genres_ml100k", [*GENRES, "loss.name=msl"])
    with pytest.raises(ConfigError, match="does not apply"):
        build_on("uem_genres_ml100k", [*GENRES, "data.eval_candidates=3"])


@pytest.mark.parametrize("history", ["soft", "text", "soft+head"])
def test_the_genre_benchmark_re_predicts_the_test_users_of_the_run(tmp_path, history):
    """benchmarks.uem_genres resamples per-user F1 for its paired interval: the best checkpoint re-predicting the
    test users must give exactly the run's own test F1 (also with the genre head and its prior, ``prior=``)."""
    from benchmarks.uem_genres import test_predictions
    from zoo.config import compose
    from zoo.run import run

    corpus = synthetic_corpus()
    head = ["model.align_weight=1", "eval.prior_weight=2"] if history.endswith("+head") else []
    history = history.removesuffix("+head")
    common = [*GENRES, f"model.history={history}", "seed=3", *head]
    shrink = [o for o in SHRINK if not o.startswith(("trainer.limit_test", "trainer.limit_val"))]
    run_dir = tmp_path / history
    metrics = run(compose("uem_genres_ml100k", [*common, *shrink, "logger.name=none", f"run_dir={run_dir}"]), corpus)
    preds, labels = test_predictions(common, run_dir, corpus=corpus)
    assert preds.shape == labels.shape and len(preds) >= 2
    f1 = sample_f1(torch.from_numpy(preds), torch.from_numpy(labels))
    assert float(f1.mean()) == pytest.approx(metrics["test/f1"], abs=1e-6)
    if head:  # offsets=: the decision tuned on the validation users, whose F1 at the run's own one is its best
        from benchmarks.uem_genres import tune_decision

        val, val_labels = test_predictions(common, run_dir, corpus=corpus, split="val")
        own = float(sample_f1(torch.from_numpy(val), torch.from_numpy(val_labels)).mean())
        assert own == pytest.approx(metrics["best/val/f1"], abs=1e-6)
        tuned = tune_decision(common, run_dir, [2.0, 1e4], [0.0, 1.0], corpus=corpus)
        assert tuned["val_f1"]["weight 2, offset 0"] == pytest.approx(own, abs=1e-4)
        assert tuned["best_val_f1"] == max(tuned["val_f1"].values()) and len(tuned["val_f1"]) == 4


def permuted(batch: dict, order: torch.Tensor) -> dict:
    """The batch with its rows (users) in ``order``."""
    rows = len(batch["prompt_ids"])
    return {k: v[order] if torch.is_tensor(v) and v.dim() and len(v) == rows else v for k, v in batch.items()}


@pytest.mark.parametrize("tokens", ["queries", "per_item"])
def test_the_probe_sees_whether_the_lm_reads_the_soft_prompts(tokens):
    from benchmarks.uem_probe import probe

    torch.manual_seed(0)
    model, datamodule = build_on("uem_ml100k", [*TINY, *SHRINK, f"model.tokens={tokens}"])
    model.eval()
    batch = first(datamodule, "test")
    rows = len(batch["prompt_ids"])
    same = probe(model, batch, permuted(batch, torch.arange(rows)))
    assert same["first_token_kl_shuffled_max"] == pytest.approx(0.0, abs=1e-9)
    # per_item: a slot per history position that at least two users fill
    slots = 4 if tokens == "queries" else int(((batch["history"] > 0).sum(0) >= 2).sum())
    assert len(same["spread_per_slot"]) == slots
    assert same["soft_prompt_rms"] == pytest.approx(float(model.user_module.gain), rel=1e-3)
    moved = probe(model, batch, permuted(batch, torch.roll(torch.arange(rows), 1)))
    assert moved["first_token_kl_shuffled_mean"] > 1e-6  # a fresh LM reads its soft prompts


def test_the_probe_ranks_every_user_by_the_alignment_term(tmp_path):
    """uem_probe's alignment-head NDCG: every user, the target's rank among all items; an oracle user vector (the
    target's own title vector) scores 1 and most-popular is ranked by the input counts."""
    import zoo
    from benchmarks.uem_probe import alignment_head
    from zoo.config import compose
    from zoo.run import run

    corpus = synthetic_corpus()
    run_dir = tmp_path / "aligned"
    overrides = [*TINY, *SHRINK, "model.align_weight=0.5", "logger.name=none", f"run_dir={run_dir}"]
    run(compose("uem_ml100k", overrides), corpus)
    rec = zoo.load(run_dir)
    rec.model.eval()
    found = alignment_head(rec, corpus)
    assert found["alignment_head_users"] == corpus.num_users
    assert 0 <= found["alignment_head_test_ndcg@10"] <= 1
    targets = torch.tensor([corpus.items[corpus.offsets[u + 1] - 1] for u in range(corpus.num_users)])
    rec.model.user_vectors = lambda batch, prompts: rec.model.title_vectors()[targets[batch["user"]] - 1]
    assert alignment_head(rec, corpus)["alignment_head_test_ndcg@10"] == pytest.approx(1.0)
    histories = np.concatenate(
        [corpus.items[corpus.offsets[u] : corpus.offsets[u + 1] - 1] for u in range(len(targets))]
    )
    counts = np.bincount(histories, minlength=corpus.num_items + 1)
    by_hand = np.mean([1 / np.log2(r + 2) if r < 10 else 0 for r in [(counts[1:] > counts[t]).sum() for t in targets]])
    assert found["most_popular_by_input_counts_test_ndcg@10"] == pytest.approx(by_hand, abs=1e-5)

    # it ranks by the model's whole scorer (alignment_logits, with model.align_popularity its popularity feature)
    def worst(batch, prompts):  # the target below every other item
        return -torch.nn.functional.one_hot(targets[batch["user"]] - 1, corpus.num_items).float()

    rec.model.alignment_logits = worst
    assert alignment_head(rec, corpus)["alignment_head_test_ndcg@10"] == 0.0


@pytest.mark.parametrize("tokens", ["queries", "per_item"])
def test_the_user_slot_is_the_mean_soft_prompt_right_before_the_response(tokens):
    common = [*TINY, f"model.tokens={tokens}", "model.align_weight=1"]
    plain, datamodule = build_on("uem_ml100k", common)
    slotted, slot_dm = build_on("uem_ml100k", [*common, "model.user_slot=true"])
    slotted.load_state_dict(plain.state_dict())
    plain.eval(), slotted.eval()
    batch, with_slot = first(datamodule), first(slot_dm)
    assert torch.equal(batch["history"], with_slot["history"])
    # one more INJECT position per row, the last prompt token (left padding: the prompt ends at the last column)
    assert ((with_slot["prompt_ids"] == INJECT).sum(1) == (batch["prompt_ids"] == INJECT).sum(1) + 1).all()
    assert (with_slot["prompt_ids"][:, -1] == INJECT).all()
    with torch.no_grad():
        _, mask = plain.user_tokens(batch)
        flat = slotted.soft_prompts(with_slot)
        mean = plain.user_vectors(batch, plain.soft_prompts(batch))
        counts = mask.sum(1) + 1
        last = flat[counts.cumsum(0) - 1]  # each row's last injected vector
        assert torch.allclose(last, mean, atol=1e-6)
        assert torch.allclose(slotted.user_vectors(with_slot, flat), mean, atol=1e-6)
        # the alignment term reads the same user vector with or without the slot
        assert torch.allclose(
            slotted.alignment_loss(with_slot, flat), plain.alignment_loss(batch, plain.soft_prompts(batch))
        )
    for setting in ("model.user_slot=true", "model.align_popularity=true", "model.align_items=text"):
        with pytest.raises(ConfigError, match="task 1"):
            build_on("uem_genres_ml100k", [*GENRES, "model.align_weight=1", setting])


def test_the_user_bias_adds_the_same_row_bias_in_training_and_in_decoding():
    from zoo.modules.llm import generate_items

    model, datamodule = build_on("uem_ml100k", [*TINY, "model.user_bias=true"])
    model.eval()
    batch = first(datamodule)
    with torch.no_grad():
        model.bias_scale.fill_(0.0)  # it starts at 0: the LM's own logits
        labels = batch["labels"]
        predicts = torch.zeros_like(labels, dtype=torch.bool)
        predicts[:, :-1] = labels[:, 1:] != -100
        prompts = model.soft_prompts(batch)
        plain = model.backbone(batch["input_ids"], batch["attention_mask"], predicts, prompts)
        assert torch.allclose(model.token_logits(batch, predicts, prompts), plain)
        model.bias_scale.fill_(0.7)
        table = model.backbone.model.get_input_embeddings().weight
        bias = 0.7 * model.user_vectors(batch, prompts) @ table.T
        rows = predicts.nonzero()[:, 0]
        assert torch.allclose(model.token_logits(batch, predicts, prompts), plain + bias[rows], atol=1e-5)
        # decoding: each step's logits of a row get that row's bias, so beam search ranks by the biased scores
        items, scores = model.rank_scored(batch, 5)
        same_items, same_scores = generate_items(
            model.backbone,
            batch["prompt_ids"],
            batch["prompt_mask"],
            model.titles.trie,
            num_beams=5,
            vectors=prompts,
            logit_bias=bias,
        )
        assert torch.equal(items, same_items) and torch.allclose(scores, same_scores)
        unbiased, _ = generate_items(
            model.backbone, batch["prompt_ids"], batch["prompt_mask"], model.titles.trie, num_beams=5, vectors=prompts
        )
        model.bias_scale.fill_(0.0)
        assert torch.equal(model.rank_scored(batch, 5)[0], unbiased)
    model.train()
    model.bias_scale.data.fill_(0.0)
    model.compute_loss(batch).backward()
    assert model.bias_scale.grad is not None and float(model.bias_scale.grad.abs()) > 0  # it learns from 0


def test_the_item_prior_adds_the_alignment_terms_log_probability_to_each_title():
    """``eval.prior_weight``: every beam's score is the LM's plus the weight times the alignment term's
    log-probability of its item (checked against the LM-alone scores of the same items); a weight far above the
    LM's scores ranks by the alignment term; a model without its own item scorer refuses the setting."""
    model, datamodule = build_on("uem_ml100k", [*TINY, "model.align_weight=1", "eval.prior_weight=2"])
    model.eval()
    batch = first(datamodule, "test")
    with torch.no_grad():
        prompts = model.soft_prompts(batch)
        logp = torch.log_softmax(model.alignment_logits(batch, prompts), -1)
        prior = model.decoding_inputs(batch)["item_prior"]
        assert prior.shape == (len(batch["target"]), model.num_items + 1) and torch.isinf(prior[:, 0]).all()
        assert torch.allclose(prior[:, 1:], 2 * logp, atol=1e-5)
        items, scores = model.rank_scored(batch, 5)
        candidates = items  # the same items decoded without the prior: their LM scores
        model.cfg.eval.prior_weight = 0.0
        assert model.decoding_inputs(batch)["item_prior"] is None
        lm_items, lm_scores = model.rank_scored(batch, 5, candidates=candidates)
        lm = {(b, int(i)): float(s) for b in range(len(items)) for i, s in zip(lm_items[b], lm_scores[b])}
        for b in range(len(items)):
            root = torch.logsumexp(2 * logp[b], 0)
            for i, s in zip(items[b].tolist(), scores[b].tolist()):
                assert s == pytest.approx(lm[(b, i)] + 2 * float(logp[b, i - 1]) - float(root), abs=1e-3)
        model.cfg.eval.prior_weight = 1e4
        assert torch.equal(model.rank(batch, 5), logp.topk(5, dim=-1).indices + 1)
    with pytest.raises(ConfigError, match="no item scorer"):
        build_on("uem_ml100k", [*TINY, "eval.prior_weight=1"])  # no alignment term
    with pytest.raises(ConfigError, match="no item scorer"):
        build_on("llmrec_ml100k", ["eval.prior_weight=1"])
    with pytest.raises(ConfigError, match="prior_weight must be >= 0"):
        build_on("uem_ml100k", [*TINY, "model.align_weight=1", "eval.prior_weight=-1"])


def test_the_genre_head_trains_with_the_lm_and_guides_the_decoder():
    """``uem_genres`` with ``model.align_weight``: a multi-label BCE head on the mean soft prompt adds to the LM's
    loss; ``eval.prior_weight`` adds weight x its log-odds of every genre of the answer to the decoder's scores,
    so a weight far above the LM's scores answers exactly the genres the head calls likely (at least one, at most
    ``model.max_genres``), and weight 0 is the LM alone. The text baseline has no module to hold the head."""
    model, datamodule = build_on("uem_genres_ml100k", [*GENRES, "model.align_weight=0.5", "eval.prior_weight=1"])
    batch = first(datamodule, "test")
    model.eval()
    with torch.no_grad():
        prompts = model.soft_prompts(batch)
        head = model.genre_logits(batch, prompts)
        expected = torch.nn.functional.binary_cross_entropy_with_logits(head, batch["labels_multi"])
        model.cfg.model.align_weight = 0.0
        alone = model.compute_loss(batch)
        model.cfg.model.align_weight = 0.5
        assert torch.allclose(model.compute_loss(batch), alone + 0.5 * expected, rtol=1e-5)
        model.genre_head.bias.copy_(torch.linspace(3, -3, model.num_labels))  # genres 0..G/2-1 likely, in order
        head = model.genre_logits(batch, prompts)
        model.cfg.eval.prior_weight = 1e4

        def answer(logodds):  # the genres with positive log-odds, the likeliest first, at least 1, at most the cap
            likely = logodds > 0
            top = logodds.argsort(1, descending=True)[:, : model.cfg.model.max_genres]
            wanted = torch.zeros_like(likely).scatter(1, top, True) & likely
            wanted[~likely.any(1), logodds.argmax(1)[~likely.any(1)]] = True
            return wanted

        assert torch.equal(model.predict_labels(batch).bool(), answer(head))
        # eval.prior_offset shifts the threshold: at -1.5 every genre with log-odds above 1.5, at +1.5 above -1.5
        for offset in (-1.5, 1.5):
            model.cfg.eval.prior_offset = offset
            assert torch.equal(model.predict_labels(batch).bool(), answer(head + offset))
        model.cfg.eval.prior_offset = 0.0
        model.cfg.eval.prior_weight = 0.0
        plain = model.predict_labels(batch)
        model.genre_head.weight.mul_(0.0).add_(1.0)  # a different head: the LM alone does not read it
        assert torch.equal(model.predict_labels(batch), plain)
    model.train()
    model.zero_grad()
    model.compute_loss(batch).backward()
    assert float(model.genre_head.weight.grad.abs().sum()) > 0
    assert float(model.user_module.project_in.weight.grad.abs().sum()) > 0
    with pytest.raises(ConfigError, match="has none"):
        build_on("uem_genres_ml100k", [*GENRES, "model.history=text", "model.align_weight=1"])
    with pytest.raises(ConfigError, match="no item scorer"):
        build_on("uem_genres_ml100k", [*GENRES, "eval.prior_weight=1"])
    with pytest.raises(ConfigError, match="prior_offset"):  # without the weight
        build_on("uem_genres_ml100k", [*GENRES, "model.align_weight=1", "eval.prior_offset=1"])
    with pytest.raises(ConfigError, match="prior_offset"):  # task 1's prior is a softmax: an offset means nothing
        build_on("uem_ml100k", [*TINY, "model.align_weight=1", "eval.prior_weight=1", "eval.prior_offset=1"])


@pytest.mark.parametrize(
    "argv, message",
    [(["offsets=0,1"], "needs prior"), (["prior=1", "offsets=0,x"], "offsets: expected numbers")],
)
def test_the_genre_benchmarks_bad_arguments_are_one_line(capsys, argv, message):
    from benchmarks.common import cli
    from benchmarks.uem_genres import DOC, body

    assert cli(body, DOC, argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
