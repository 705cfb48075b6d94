"""SASRec and its encoder: causality, padding invariance, the ItemScorer contract, sequence-mode supervision, every
item loss, learning a synthetic pattern, candidate export, and the recipes."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import synthetic_corpus

from zoo.build import build
from zoo.config import compose, recipe_names
from zoo.data.candidates import load_candidates
from zoo.data.corpus import Corpus
from zoo.data.datamodule import SequentialDataModule
from zoo.errors import ConfigError
from zoo.metrics import metrics_from_ranks
from zoo.models.sasrec import SASRec, export_candidates, top_k_items
from zoo.modules.sequence_encoder import SequenceEncoder
from zoo.registry import MODELS
from zoo.run import run

TINY = [
    "model.hidden_size=16",
    "model.inner_size=32",
    "model.num_layers=1",
    "model.dropout=0.0",
    "model.attn_dropout=0.0",
    "data.max_len=8",
    "data.train_len=0",
    "data.batch_size=16",
    "data.eval_batch_size=32",
    "trainer.enable_progress_bar=false",
    "logger.name=none",
]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one thread is faster, and far faster on a shared, oversubscribed CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def cyclic_corpus(users: int = 48, items: int = 12, length: int = 10) -> Corpus:
    """Every user walks the items in a cycle from a random start: the next item is always (last mod N) + 1
    (the shared synthetic corpus, with rows of 4 to ``length`` items)."""
    return synthetic_corpus(num_items=items, users=users, min_len=4, max_len=length)


def make_model(overrides: list[str] = (), corpus: Corpus | None = None) -> tuple[SASRec, SequentialDataModule]:
    model, datamodule = build(compose("sasrec_ml100k", [*TINY, *overrides]), corpus=corpus or cyclic_corpus())
    assert isinstance(model, SASRec) and isinstance(datamodule, SequentialDataModule)
    return model, datamodule


def tiny_encoder(**kw) -> SequenceEncoder:
    torch.manual_seed(0)
    args = dict(num_items=20, max_len=6, hidden_size=8, num_layers=2, num_heads=2, inner_size=16, dropout=0.0)
    return SequenceEncoder(**{**args, **kw}).eval()


def test_encoder_is_causal():
    encoder = tiny_encoder(attn_dropout=0.0)
    history = torch.tensor([[0, 3, 5, 7, 9, 11]])
    changed = history.clone()
    changed[0, 4] = 2
    a, b = encoder(history), encoder(changed)
    assert torch.allclose(a[0, :4], b[0, :4], atol=1e-6)
    assert not torch.allclose(a[0, 4:], b[0, 4:])


def test_encoder_output_does_not_depend_on_batch_padding():
    """A row encoded alone (its leading padding cropped) equals the same row beside a longer one."""
    encoder = tiny_encoder(attn_dropout=0.0)
    short = torch.tensor([[0, 0, 0, 4, 8, 15]])
    batch = torch.cat([short, torch.tensor([[1, 2, 3, 4, 5, 6]])])
    alone, together = encoder(short), encoder(batch)
    assert torch.allclose(alone[0], together[0], atol=1e-6)
    assert (alone[0, :3] == 0).all()


def test_encoder_length_groups_give_the_same_states_as_one_row_at_a_time(monkeypatch):
    monkeypatch.setattr(SequenceEncoder, "GROUP_ROWS", 2)
    encoder = tiny_encoder(attn_dropout=0.0)
    lengths = [6, 1, 2, 5, 1, 3, 1]
    history = torch.zeros(len(lengths), 6, dtype=torch.long)
    for row, n in enumerate(lengths):
        history[row, 6 - n :] = torch.arange(1, n + 1) + row
    grouped = encoder(history)
    for row in range(len(lengths)):
        assert torch.allclose(grouped[row], encoder(history[row : row + 1])[0], atol=1e-6)
    assert (grouped[1, :5] == 0).all()


def test_encoder_handles_all_padding_rows_and_rejects_long_histories():
    encoder = tiny_encoder()
    out = encoder(torch.tensor([[0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 7]]))
    assert torch.isfinite(out).all() and (out[0] == 0).all()
    with pytest.raises(ConfigError, match="max_len"):
        encoder(torch.ones(1, 7, dtype=torch.long))


def test_encoder_attention_matches_a_direct_reference():
    """One block's attention against multi-head attention written out with explicit softmax."""
    encoder = tiny_encoder(num_layers=1, attn_dropout=0.0)
    block = encoder.blocks[0]
    x = torch.randn(2, 5, 8)
    valid = torch.tensor([[False, True, True, True, True], [True, True, True, True, True]])
    q, k, v = block.qkv(x).chunk(3, dim=-1)
    heads = []
    for h in range(2):
        sl = slice(4 * h, 4 * h + 4)
        logits = q[..., sl] @ k[..., sl].transpose(1, 2) / 2.0
        allowed = torch.ones(5, 5).tril().bool() & valid[:, None, :]
        allowed |= torch.eye(5, dtype=torch.bool)
        heads.append(logits.masked_fill(~allowed, float("-inf")).softmax(-1) @ v[..., sl])
    attended = block.out(torch.cat(heads, dim=-1))
    hidden = block.norm1(x + attended)
    expected = block.norm2(hidden + block.ff_out(F.gelu(block.ff_in(hidden))))
    from zoo.modules.sequence_encoder import attention_mask

    assert torch.allclose(block(x, attention_mask(valid)), expected, atol=1e-5)


def test_bad_encoder_settings_are_config_errors():
    with pytest.raises(ConfigError, match="activation"):
        make_model(["model.activation=swishy"])
    with pytest.raises(ConfigError, match="divisible"):
        make_model(["model.num_heads=3"])
    with pytest.raises(ConfigError, match="unknown key"):
        compose("sasrec_ml100k", ["model.hidden=3"])


def test_item_scorer_contract():
    model, _ = make_model()
    hidden = torch.randn(5, 16)
    items = torch.randint(1, 13, (5, 3))
    all_scores = model.score_all(hidden)
    assert all_scores.shape == (5, 13)
    assert torch.allclose(model.score_items(hidden, items), all_scores.gather(1, items), atol=1e-6)
    assert torch.allclose(model.score_state(hidden, 4, 9), all_scores[:, 4:9], atol=1e-6)


def test_sequence_mode_loss_equals_mean_of_per_prefix_losses():
    """One pass over a user's row supervises exactly the (prefix -> next item) examples of prefix mode."""
    model, datamodule = make_model()
    model.eval()
    loader = datamodule.train_dataloader()
    batch = next(iter(loader))
    batch = {key: value[:4] for key, value in batch.items()}
    sequence_loss = model.compute_loss(batch)
    per_prefix, count = 0.0, 0
    for row in range(4):
        history, targets = batch["history"][row], batch["targets"][row]
        for pos in torch.nonzero(targets).flatten().tolist():
            prefix = torch.zeros(1, model.max_len, dtype=torch.long)
            prefix[0, model.max_len - pos - 1 :] = history[: pos + 1]
            logits = model.score_all(model.user_state({"history": prefix}))
            logits[:, 0] = float("-inf")
            per_prefix += float(F.cross_entropy(logits, targets[pos].view(1)))
            count += 1
    assert float(sequence_loss) == pytest.approx(per_prefix / count, rel=1e-4)


def test_prefix_rows_train_the_same_pairs_as_sequence_rows():
    """model.train_rows=prefix (RecBole's rows): one row per (user, prefix), and together they hold exactly the
    (prefix -> next item) pairs the sequence rows supervise; the loss is the mean over those rows."""
    model, datamodule = make_model(["model.train_rows=prefix"])
    prefix_pairs = sorted(
        (int(u), int(t)) for b in datamodule.train_dataloader() for u, t in zip(b["user"], b["target"])
    )
    _, sequence_dm = make_model()
    sequence_pairs = sorted(
        (int(u), int(t))
        for b in sequence_dm.train_dataloader()
        for u, row in zip(b["user"], b["targets"])
        for t in row[row != 0]
    )
    assert prefix_pairs == sequence_pairs
    batch = next(iter(datamodule.train_dataloader()))
    assert "targets" not in batch and torch.isfinite(model.compute_loss(batch))
    with pytest.raises(ConfigError, match="train_rows"):
        make_model(["model.train_rows=window"])


@pytest.mark.parametrize("max_len", [4, 5])
def test_training_windows_train_every_target_once_with_context(max_len):
    model, datamodule = make_model([f"data.max_len={max_len}", "data.train_len=13"])
    assert datamodule.train_len == 13 and model.cfg.data.train_len == 13 and model.max_len == max_len
    lengths = [13, 9, 3, 1]
    history = torch.zeros(len(lengths), 13, dtype=torch.long)
    targets = torch.zeros_like(history)
    for row, n in enumerate(lengths):
        history[row, 13 - n :] = torch.randint(1, 13, (n,))
        targets[row, 13 - n :] = 100 * row + torch.arange(13 - n, 13) + 1  # a unique id per (row, column)
    windows, window_targets = model.training_windows(history, targets)
    assert windows.shape[1] == max_len
    kept = window_targets[window_targets != 0]
    assert sorted(kept.tolist()) == sorted(targets[targets != 0].tolist())  # each target exactly once
    stride = max_len // 2
    for window, row_targets in zip(windows, window_targets):
        for col in torch.nonzero(row_targets).flatten().tolist():
            row, column = divmod(int(row_targets[col]) - 1, 100)
            available = int((history[row, : column + 1] != 0).sum())
            context = int((window[: col + 1] != 0).sum())
            assert context >= min(max_len - stride + 1, available)
            assert torch.equal(window[col], history[row, column])


def test_long_rows_train_in_windows_and_evaluate_on_the_last_max_len_items():
    corpus = Corpus.from_sequences("long", [[(u + t) % 12 + 1 for t in range(30)] for u in range(6)], num_items=12)
    model, datamodule = make_model(["data.train_len=28"], corpus=corpus)
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["history"].shape[1] == 28
    assert torch.isfinite(model.compute_loss(batch))
    val = next(iter(datamodule.val_dataloader()))
    assert torch.allclose(model.user_state(val), model.user_state({"history": val["history"][:, -8:]}))


@pytest.mark.parametrize("loss", ["ce", "bce", "bpr", "sampled_softmax"])
def test_every_item_loss_trains_sasrec(loss):
    model, datamodule = make_model([f"loss.name={loss}"])
    batch = next(iter(datamodule.train_dataloader()))
    value = model.compute_loss(batch)
    value.backward()
    assert torch.isfinite(value)
    assert model.encoder.item_embedding.weight.grad.abs().sum() > 0


def test_popularity_sampled_softmax_gets_item_counts_in_prepare():
    model, datamodule = make_model(["loss.name=sampled_softmax", "loss.sampler=popularity", "loss.num_negatives=5"])
    counts = torch.from_numpy(datamodule.train_item_counts("val")).float()
    expected = counts.clamp(min=1)
    expected[0] = 0
    assert torch.allclose(model.loss.popularity.probs, (expected / expected.sum()).float())
    assert torch.isfinite(model.compute_loss(next(iter(datamodule.train_dataloader()))))


def train_steps(model: SASRec, datamodule: SequentialDataModule, steps: int, lr: float) -> None:
    """A plain optimisation loop (no Trainer: fast enough for a unit test)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    batches = list(datamodule.train_dataloader())
    for step in range(steps):
        loss = model.compute_loss(batches[step % len(batches)])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def test_sasrec_learns_a_cyclic_pattern():
    L.seed_everything(0, verbose=False)
    model, datamodule = make_model(["data.batch_size=64"])
    batch = next(iter(datamodule.test_dataloader()))
    before = metrics_from_ranks(model.eval_ranks(batch), [5])["recall@5"]
    train_steps(model, datamodule, steps=60, lr=0.02)
    with torch.no_grad():
        after = metrics_from_ranks(model.eval_ranks(batch), [5])["recall@5"]
    assert after > 0.9 > before  # chance is 5/12


def test_export_candidates_ranks_by_score(tmp_path):
    L.seed_everything(0, verbose=False)
    model, datamodule = make_model()
    train_steps(model, datamodule, steps=3, lr=0.01)
    path = export_candidates(model, datamodule, 4, tmp_path / "cand.npz")
    lists = load_candidates(path)
    assert set(lists) == {"train", "val", "test"}
    val_users, val_items = lists["val"]
    assert val_items.shape == (len(datamodule.examples("val")), 4)
    assert (val_items >= 1).all() and all(len(set(row)) == 4 for row in val_items.tolist())
    assert np.array_equal(lists["train"][1], val_items) and np.array_equal(lists["train"][0], val_users)
    model.eval()
    test = datamodule.examples("test")
    batch = datamodule.test_dataloader().dataset[list(range(len(test)))]
    scores = model.score(batch)
    scores[:, 0] = float("-inf")
    assert np.array_equal(lists["test"][1][:, 0], scores.argmax(dim=1).numpy())
    state = model.user_state(batch)
    chunked = top_k_items(lambda s, e: model.score_state(state, s, e), model.num_items, 4, chunk_size=5)
    assert np.array_equal(chunked.numpy(), lists["test"][1])
    with pytest.raises(ConfigError, match="candidates k"):
        export_candidates(model, datamodule, 0, tmp_path / "bad.npz")


def test_frozen_views_for_laser():
    model, datamodule = make_model()
    model.eval()
    table = model.item_embeddings()
    assert table.shape == (13, 16) and not table.requires_grad
    batch = next(iter(datamodule.val_dataloader()))
    states = model.user_states(batch)
    assert states.shape == (len(batch["history"]), 16) and not states.requires_grad
    assert torch.allclose(model.score_all(states), model.score(batch), atol=1e-5)


def write_atomic(folder: Path, corpus: Corpus) -> Path:
    folder.mkdir()
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for user in range(corpus.num_users):
        lines += [f"u{user}\ti{item}\t{t}" for t, item in enumerate(corpus.sequence(user))]
    (folder / "cyc.inter").write_text("\n".join(lines) + "\n")
    return folder


def test_run_writes_candidates_after_test(tmp_path):
    folder = write_atomic(tmp_path / "cyc", cyclic_corpus(users=20))
    cfg = compose(
        "sasrec_ml100k",
        [
            *TINY,
            "data.name=atomic",
            f"data.path={folder}",
            "trainer.max_epochs=1",
            "model.export_candidates_k=3",
            f"run_dir={tmp_path / 'run'}",
        ],
    )
    os.environ.pop("ZOO_RUN_DIR", None)
    try:
        metrics = run(cfg)
    finally:
        os.environ.pop("ZOO_RUN_DIR", None)
    assert "test/ndcg@10" in metrics
    lists = load_candidates(tmp_path / "run" / "candidates.npz")
    assert lists["test"][1].shape == (20, 3)


@pytest.mark.parametrize("name", [n for n in recipe_names() if n.startswith("sasrec")])
def test_sasrec_recipes_compose(name):
    cfg = compose(name)  # sasrec_* recipes: SASRec or a subclass of it (sasrec_kar)
    assert issubclass(MODELS.get(cfg.model.name), SASRec) and cfg.loss.name in ("ce", "bce")
    assert cfg.data.max_len == 50


@pytest.mark.slow
def test_sasrec_ml100k_reaches_a_sensible_ndcg(tmp_path):
    cfg = compose("sasrec_ml100k", ["trainer.max_epochs=60", "logger.name=none", f"run_dir={tmp_path}"])
    os.environ.pop("ZOO_RUN_DIR", None)
    try:
        metrics = run(cfg)
    finally:
        os.environ.pop("ZOO_RUN_DIR", None)
    assert metrics["test/ndcg@10"] > 0.04  # pop scores about 0.02 on this split
