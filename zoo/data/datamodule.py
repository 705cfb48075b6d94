"""The shared sequential DataModule: leave-one-out splits, history windows, batching, DDP sharding.

Protocol (``../shared/docs/methods.md``): for a user with sequence s of length n, the test example is
(s[:n-1] -> s[n-1]), validation (s[:n-2] -> s[n-2]) and training covers every prefix of s[:n-2]:

* ``train_mode="sequence"``: one row per user, inputs s[:n-3] and targets s[1:n-2] at every position (causal
  models such as SASRec predict every prefix's next item in one pass);
* ``train_mode="prefix"``: one row per (user, t), history s[:t] -> target s[t] for t = 1..n-3 (seq2seq and
  prompt-based models).

Histories keep the most recent ``max_len`` items and are **left**-padded with 0, so the last column is always the
most recent item. Sources with their own split (``Corpus.fixed_splits``) use it instead of leave-one-out.

A model states what it needs with ``connect(DataSpec(...))`` before ``setup`` (litgpt style): the training mode,
the history length, and a ``transform`` applied to each collated batch (e.g. items -> Semantic-ID tokens or ->
a tokenised prompt), so one DataModule serves ID, Semantic-ID and text methods.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from zoo.data.corpus import Corpus
from zoo.data.loading import load_corpus
from zoo.errors import DataError


@dataclass
class DataSpec:
    train_mode: str = "sequence"  # "sequence" | "prefix"
    max_len: int | None = None  # history length; None = data.max_len
    transform: Callable[[dict], dict] | None = None  # applied to every collated batch (train and eval)


@dataclass
class Examples:
    """Vectorised examples: history = source[start:end] (last max_len kept), target (or per-position targets)."""

    source: np.ndarray
    start: np.ndarray
    end: np.ndarray
    target: np.ndarray  # [E]; unused (-1) for sequence-mode rows, whose targets are source[start+1:end+1]
    user: np.ndarray

    def __len__(self) -> int:
        return len(self.start)


class ExampleDataset(Dataset):
    """Builds whole batches at once from index lists (fast: numpy gathers, no per-example Python)."""

    def __init__(self, examples: Examples, max_len: int, sequence_targets: bool, transform=None) -> None:
        self.ex = examples
        self.max_len = max_len
        self.sequence_targets = sequence_targets
        self.transform = transform

    def __len__(self) -> int:
        return len(self.ex)

    def __getitem__(self, index: list[int]) -> dict:
        idx = np.asarray(index, dtype=np.int64)
        ex = self.ex
        start, end = ex.start[idx], ex.end[idx]
        cols = end[:, None] - self.max_len + np.arange(self.max_len)[None, :]
        valid = cols >= start[:, None]
        history = np.where(valid, ex.source[np.clip(cols, 0, None)], 0)
        batch = {"history": torch.from_numpy(history), "user": torch.from_numpy(ex.user[idx])}
        if self.sequence_targets:
            targets = np.where(valid, ex.source[np.clip(cols + 1, 0, len(ex.source) - 1)], 0)
            batch["targets"] = torch.from_numpy(targets)
        else:
            batch["target"] = torch.from_numpy(ex.target[idx])
        return self.transform(batch) if self.transform is not None else batch


class BatchIndexSampler(Sampler):
    """Yields lists of example indices. Shuffles with (seed, epoch) when training. Under DDP each rank takes
    every world-th example: training pads to equal length (ranks must step together), evaluation does not
    (every example is counted exactly once, so metrics equal a single process's)."""

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int, rank: int = 0, world: int = 1) -> None:
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.rank, self.world = rank, world
        self.epoch = 0

    def _indices(self) -> np.ndarray:
        if self.shuffle:
            order = np.random.default_rng((self.seed, self.epoch)).permutation(self.n)
            if self.world > 1:
                pad = (-self.n) % self.world
                order = np.concatenate([order, order[:pad]])
        else:
            order = np.arange(self.n)
        return order[self.rank :: self.world]

    def __iter__(self) -> Iterator[list[int]]:
        order = self._indices()
        self.epoch += 1
        for i in range(0, len(order), self.batch_size):
            yield order[i : i + self.batch_size].tolist()

    def __len__(self) -> int:
        return (len(self._indices()) + self.batch_size - 1) // self.batch_size


class SequentialDataModule(L.LightningDataModule):
    def __init__(self, cfg, seed: int = 42, corpus: Corpus | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.seed = seed
        self.corpus = corpus if corpus is not None else load_corpus(cfg)
        self.spec = DataSpec()
        self._examples: dict[str, Examples] = {}

    # -- what models read -------------------------------------------------------------------------------
    @property
    def num_items(self) -> int:
        return self.corpus.num_items

    @property
    def num_users(self) -> int:
        return self.corpus.num_users

    @property
    def max_len(self) -> int:
        return self.spec.max_len or self.cfg.max_len

    def connect(self, spec: DataSpec) -> None:
        if spec.train_mode not in ("sequence", "prefix"):
            raise DataError(f"unknown train_mode '{spec.train_mode}' (sequence | prefix)")
        self.spec = spec
        self._examples.pop("train", None)

    def examples(self, split: str) -> Examples:
        """The examples of ``split`` ("train", "val" or "test") under the connected spec."""
        if split not in self._examples:
            if self.corpus.fixed_splits:
                self._examples[split] = self._fixed_examples(split)
            else:
                self._examples[split] = self._leave_one_out(split)
        return self._examples[split]

    def train_item_counts(self, split: str = "val") -> np.ndarray:
        """How often each item occurs in the histories available before ``split``'s targets ([N+1])."""
        ex = self.examples(split)
        lengths = ex.end - ex.start
        rows = np.repeat(ex.start - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths) + np.arange(lengths.sum())
        return np.bincount(ex.source[rows], minlength=self.num_items + 1)

    # -- split construction ---------------------------------------------------------------------------------
    def _leave_one_out(self, split: str) -> Examples:
        c = self.corpus
        starts, lengths = c.offsets[:-1], c.lengths()
        users = np.arange(c.num_users, dtype=np.int64)
        ok = lengths >= 3
        if not ok.any():
            raise DataError(f"{c.name}: no user has the 3 interactions leave-one-out needs")
        if split in ("val", "test"):
            cut = 2 if split == "val" else 1
            end = starts + lengths - cut
            return Examples(c.items, starts[ok], end[ok], c.items[end[ok]], users[ok])
        if split != "train":
            raise DataError(f"unknown split '{split}'")
        train_len = lengths - 2  # the training part s[:n-2]
        if self.spec.train_mode == "sequence":
            keep = train_len >= 2
            return Examples(
                c.items, starts[keep], starts[keep] + train_len[keep] - 1, np.full(keep.sum(), -1), users[keep]
            )
        n_targets = np.clip(train_len - 1, 0, None)  # targets s[1..n-3]
        user = np.repeat(users, n_targets)
        step = np.arange(n_targets.sum()) - np.repeat(np.cumsum(n_targets) - n_targets, n_targets) + 1
        start = starts[user]
        end = start + step
        return Examples(c.items, start, end, c.items[end], user)

    def _fixed_examples(self, split: str) -> Examples:
        name = {"val": "valid"}.get(split, split)
        splits = self.corpus.fixed_splits
        if name not in splits:
            name = "test" if split == "val" and "test" in splits else name
        if name not in splits:
            raise DataError(f"{self.corpus.name}: no '{split}' split (has {', '.join(splits)})")
        fs = splits[name]
        return Examples(fs.history, fs.offsets[:-1], fs.offsets[1:], fs.targets, fs.users)

    # -- loaders --------------------------------------------------------------------------------------------
    def _loader(self, split: str, train: bool) -> DataLoader:
        ex = self.examples(split)
        trainer = getattr(self, "trainer", None)
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        batch_size = self.cfg.batch_size if train else self.cfg.eval_batch_size
        sampler = BatchIndexSampler(len(ex), batch_size, shuffle=train, seed=self.seed, rank=rank, world=world)
        sequence_targets = train and self.spec.train_mode == "sequence" and not self.corpus.fixed_splits
        dataset = ExampleDataset(ex, self.max_len, sequence_targets, self.spec.transform)
        return DataLoader(
            dataset,
            sampler=sampler,
            batch_size=None,
            num_workers=self.cfg.num_workers,
            persistent_workers=self.cfg.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)
