"""Candidate lists in val/test batches: sampled (target first, unseen distinct items, fixed seed) and read from a
retriever's candidates file; the batch format without them is unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zoo.config import DataConfig
from zoo.data.candidates import save_candidates
from zoo.data.corpus import Corpus, FixedSplit
from zoo.data.datamodule import DataSpec, SequentialDataModule, sample_candidates
from zoo.errors import ConfigError, DataError


def random_corpus(num_users: int = 40, num_items: int = 30, seed: int = 0) -> Corpus:
    rng = np.random.default_rng(seed)
    seqs = [rng.integers(1, num_items + 1, size=rng.integers(3, 12)).tolist() for _ in range(num_users)]
    return Corpus.from_sequences("random", seqs, num_items=num_items)


def batches(dm: SequentialDataModule, split: str) -> list[dict]:
    loader = {"train": dm.train_dataloader, "val": dm.val_dataloader, "test": dm.test_dataloader}[split]()
    return list(loader)


def stacked(dm: SequentialDataModule, split: str, key: str) -> torch.Tensor:
    return torch.cat([b[key] for b in batches(dm, split)])


def test_sampled_candidates_are_target_plus_unseen_distinct_items():
    corpus = random_corpus()
    dm = SequentialDataModule(DataConfig(eval_candidates=8, eval_batch_size=16), corpus=corpus)
    for split in ("val", "test"):
        cands, users = stacked(dm, split, "candidates"), stacked(dm, split, "user")
        assert cands.shape == (corpus.num_users, 8)
        assert torch.equal(cands[:, 0], stacked(dm, split, "target"))
        for row, user in zip(cands.numpy(), users.numpy()):
            negatives = row[1:]
            assert len(set(negatives)) == 7 and negatives.min() >= 1 and negatives.max() <= corpus.num_items
            assert not set(negatives) & set(corpus.sequence(user).tolist())


def test_sampled_candidates_are_the_same_for_every_method_and_run():
    corpus = random_corpus()
    spec_a, spec_b = DataSpec(train_mode="sequence"), DataSpec(train_mode="prefix")
    a = SequentialDataModule(DataConfig(eval_candidates=6, max_len=5), seed=1, corpus=corpus)
    b = SequentialDataModule(DataConfig(eval_candidates=6, max_len=20), seed=99, corpus=corpus)
    a.connect(spec_a)
    b.connect(spec_b)
    assert torch.equal(stacked(a, "test", "candidates"), stacked(b, "test", "candidates"))
    assert not torch.equal(stacked(a, "val", "candidates")[:, 1:], stacked(a, "test", "candidates")[:, 1:])


def test_negatives_are_uniform_over_unseen_items():
    num_items, rows, wanted = 20, 4000, 5
    targets = np.ones(rows, dtype=np.int64)
    seen = np.tile(np.array([1, 2, 3]), rows)  # every row saw items 1-3 -> negatives uniform over 4..20
    out = sample_candidates(num_items, targets, seen, np.arange(0, 3 * rows + 1, 3), wanted + 1, seed=0)
    counts = np.bincount(out[:, 1:].ravel(), minlength=num_items + 1)
    assert counts[:4].sum() == 0
    expected = rows * wanted / 17
    assert np.all(np.abs(counts[4:] - expected) < 0.1 * expected)


def test_rows_with_few_unseen_items_get_exactly_those():
    # 10 items, the user saw 5: all 5 unseen must be drawn (the exact fallback covers rejection misses)
    out = sample_candidates(10, np.array([2]), np.array([1, 2, 3, 4, 5]), np.array([0, 5]), 6, seed=3)
    assert out[0, 0] == 2 and sorted(out[0, 1:]) == [6, 7, 8, 9, 10]


def test_too_many_candidates_is_a_data_error():
    corpus = Corpus.from_sequences("small", [[1, 2, 3, 4]], num_items=6)
    dm = SequentialDataModule(DataConfig(eval_candidates=5), corpus=corpus)
    with pytest.raises(DataError, match="eval_candidates=5 needs 4 items"):
        dm.examples("test")


def test_no_candidates_key_by_default_and_none_in_training():
    corpus = random_corpus()
    dm = SequentialDataModule(DataConfig(), corpus=corpus)
    assert "candidates" not in batches(dm, "test")[0]
    sampled = SequentialDataModule(DataConfig(eval_candidates=4), corpus=corpus)
    assert "candidates" not in batches(sampled, "train")[0]


def test_retriever_candidates_follow_the_users(tmp_path):
    corpus = random_corpus()
    users = np.random.default_rng(1).permutation(corpus.num_users)
    lists = (users[:, None] * 1000 + np.arange(4)[None, :]) % corpus.num_items + 1  # recognisable per user
    path = tmp_path / "cands.npz"
    save_candidates(path, {"test": (users, lists)})
    dm = SequentialDataModule(DataConfig(candidates_path=str(path)), corpus=corpus)
    got, batch_users = stacked(dm, "test", "candidates"), stacked(dm, "test", "user")
    expected = (batch_users[:, None] * 1000 + torch.arange(4)[None, :]) % corpus.num_items + 1
    assert torch.equal(got, expected)
    assert "candidates" not in batches(dm, "val")[0]  # the file has no val lists


def test_retriever_candidates_errors(tmp_path):
    corpus = random_corpus()
    path = tmp_path / "c.npz"
    save_candidates(path, {"test": (np.arange(5), np.ones((5, 3), dtype=np.int64))})
    with pytest.raises(DataError, match=r"no 'test' candidates for 35 users"):
        SequentialDataModule(DataConfig(candidates_path=str(path)), corpus=corpus).examples("test")
    save_candidates(path, {"test": (np.arange(40), np.full((40, 3), 31))})
    with pytest.raises(DataError, match=r"item ids outside 0..30"):
        SequentialDataModule(DataConfig(candidates_path=str(path)), corpus=corpus).examples("test")
    with pytest.raises(DataError, match="candidates file not found"):
        SequentialDataModule(DataConfig(candidates_path=str(tmp_path / "none.npz")), corpus=corpus).examples("test")
    with pytest.raises(ConfigError, match="choose one"):
        SequentialDataModule(DataConfig(candidates_path=str(path), eval_candidates=5), corpus=corpus).examples("val")


def test_sampled_candidates_on_a_fixed_split_exclude_history_and_target():
    corpus = Corpus.from_sequences("fixed", [[1, 2, 3]], num_items=9)
    corpus.fixed_splits["test"] = FixedSplit(
        users=np.array([-1, -1]),
        history=np.array([1, 2, 4, 5, 6]),
        offsets=np.array([0, 2, 5]),
        targets=np.array([3, 7]),
    )
    dm = SequentialDataModule(DataConfig(eval_candidates=6), corpus=corpus)
    cands = dm.examples("test").candidates
    assert cands[:, 0].tolist() == [3, 7]
    assert len(set(cands[0, 1:])) == 5 and set(cands[0, 1:]) <= {4, 5, 6, 7, 8, 9}  # not history {1, 2}, target 3
    assert sorted(cands[1, 1:]) == [1, 2, 3, 8, 9]  # ... and history {4, 5, 6}, target 7
