"""The shared sequential DataModule: leave-one-out splits, history windows, batching, DDP sharding.

Protocol (``docs/protocol.md``): for a user with sequence s of length n, the test example is
(s[:n-1] -> s[n-1]), validation (s[:n-2] -> s[n-2]) and training covers every prefix of s[:n-2]:

* ``train_mode="sequence"``: one row per user, inputs s[:n-3] and targets s[1:n-2] at every position (causal
  models such as SASRec predict every prefix's next item in one pass);
* ``train_mode="prefix"``: one row per (user, t), history s[:t] -> target s[t] for t = 1..n-3 (seq2seq and
  prompt-based models).

Lengths (one key each, recorded as applied in the run's config.yaml): every history holds the most recent
``data.max_len`` items, **left**-padded with 0, so the last column is always the most recent item; a
``sequence``-mode training row holds ``data.train_len`` items (0 = ``data.max_len``; a model may cut longer rows
into windows, as SASRec does). Sources with their own split (``Corpus.fixed_splits``) use it instead of
leave-one-out.

Evaluation batches carry what the :class:`zoo.evaluation.Protocol` needs:

* ``candidates`` (item ids [B, n]): under ``sampled`` (``data.eval_candidates = n``) the target in column 0 and n-1
  items the user never interacted with, drawn uniformly without replacement with a fixed seed (the same lists for
  every method and run); under ``retriever`` (``data.candidates_path``) the lists of a retriever's candidates file
  (``zoo.data.candidates``), attached to the examples of every split the file has;
* ``seen`` (item ids [B, S], 0 = padding) under ``mask_seen``: every item of the user before the target, and in the
  candidate lists those items (the target excepted) are replaced by 0.

A model states what it needs with ``connect(DataSpec(...))`` before ``setup`` (litgpt style): the training mode and
a ``transform`` applied to each collated batch (e.g. items -> Semantic-ID tokens or -> a tokenised prompt), so one
DataModule serves ID, Semantic-ID and text methods.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from zoo.data.candidates import load_candidates
from zoo.data.corpus import Corpus
from zoo.data.loading import check_training_split, load_corpus
from zoo.errors import DataError

EVAL_CANDIDATES_SEED = 2020  # fixed, independent of the run seed: every method ranks the same sampled lists


@dataclass
class DataSpec:
    train_mode: str = "sequence"  # "sequence" | "prefix"
    transform: Callable[[dict], dict] | None = None  # applied to every collated batch (train and eval)


@dataclass
class Examples:
    """Vectorised examples: history = source[start:end] (last max_len kept), target (or per-position targets)."""

    source: np.ndarray
    start: np.ndarray
    end: np.ndarray
    target: np.ndarray  # [E]; unused (-1) for sequence-mode rows, whose targets are source[start+1:end+1]
    user: np.ndarray
    candidates: np.ndarray | None = None  # [E, n] item ids to rank (sampled or a retriever's), or None

    def __len__(self) -> int:
        return len(self.start)


class ExampleDataset(Dataset):
    """Builds whole batches at once from index lists (fast: numpy gathers, no per-example Python)."""

    def __init__(
        self, examples: Examples, max_len: int, sequence_targets: bool, transform=None, with_seen: bool = False
    ) -> None:
        self.ex = examples
        self.max_len = max_len
        self.sequence_targets = sequence_targets
        self.transform = transform
        self.with_seen = with_seen

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
        if self.with_seen:  # every item before the target (not only the window), for mask-seen evaluation
            width = max(int((end - start).max()) if len(idx) else 1, 1)
            cols = start[:, None] + np.arange(width)[None, :]
            seen = np.where(cols < end[:, None], ex.source[np.clip(cols, 0, len(ex.source) - 1)], 0)
            batch["seen"] = torch.from_numpy(seen)
        if ex.candidates is not None:
            candidates = ex.candidates[idx]
            if self.with_seen:
                target = ex.target[idx][:, None]
                drop = (candidates[:, :, None] == seen[:, None, :]).any(axis=2) & (candidates != target)
                candidates = np.where(drop, 0, candidates)
            batch["candidates"] = torch.from_numpy(candidates)
        return self.transform(batch) if self.transform is not None else batch


class BatchIndexSampler(Sampler):
    """Yields lists of example indices. Shuffles with (seed, epoch) when training. Under DDP each rank takes
    every world-th example: training pads to equal length (ranks must step together), evaluation does not
    (every example is counted exactly once, so metrics equal a single process's).

    The epoch comes from the trainer: Lightning calls ``set_epoch(current epoch)`` before every training epoch,
    so a resumed run's epoch k shuffles exactly as epoch k of an uninterrupted run (the sampler's own counter is
    not in the checkpoint). Used outside a trainer (no ``set_epoch``), each iteration advances the epoch."""

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int, rank: int = 0, world: int = 1) -> None:
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.rank, self.world = rank, world
        self.epoch = 0
        self._epoch_set = False

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self._epoch_set = True

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
        if not self._epoch_set:
            self.epoch += 1
        for i in range(0, len(order), self.batch_size):
            yield order[i : i + self.batch_size].tolist()

    def __len__(self) -> int:
        return (len(self._indices()) + self.batch_size - 1) // self.batch_size


class ShardedDataModule(L.LightningDataModule):
    """Loaders over datasets that build whole batches from index lists (``dataset[list_of_indices]``), sharded
    by :class:`BatchIndexSampler` under DDP, over the corpus of ``cfg`` (loaded and cached unless given).
    Subclasses supply ``batch_dataset(split, train)``; ``cfg`` is a ``DataConfig``."""

    def __init__(self, cfg, seed: int = 42, corpus: Corpus | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.seed = seed
        self.corpus = corpus if corpus is not None else load_corpus(cfg)

    @property
    def num_items(self) -> int:
        return self.corpus.num_items

    @property
    def num_users(self) -> int:
        return self.corpus.num_users

    def batch_dataset(self, split: str, train: bool) -> Dataset:
        raise NotImplementedError

    def connect(self, spec: DataSpec) -> None:
        """Receive the model's :class:`DataSpec` (before ``setup``)."""
        self.spec = spec

    def _loader(self, split: str, train: bool) -> DataLoader:
        dataset = self.batch_dataset(split, train)
        trainer = getattr(self, "trainer", None)
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        batch_size = self.cfg.batch_size if train else self.cfg.eval_batch_size
        sampler = BatchIndexSampler(len(dataset), batch_size, shuffle=train, seed=self.seed, rank=rank, world=world)
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


class SequentialDataModule(ShardedDataModule):
    def __init__(self, cfg, seed: int = 42, corpus: Corpus | None = None, protocol=None) -> None:
        from zoo.evaluation import Protocol

        super().__init__(cfg, seed, corpus)
        self.spec = DataSpec()
        if protocol is None:
            protocol = Protocol.from_config(_ProtocolView(cfg))
        self.protocol = protocol
        self._examples: dict[str, Examples] = {}

    # -- what models read -------------------------------------------------------------------------------
    @property
    def max_len(self) -> int:
        """The history length of every example (``data.max_len``)."""
        return int(self.cfg.max_len)

    @property
    def train_len(self) -> int:
        """The length of a ``sequence``-mode training row (``data.train_len``, 0 = ``data.max_len``)."""
        return max(int(getattr(self.cfg, "train_len", 0) or 0), self.max_len)

    def connect(self, spec: DataSpec) -> None:
        """Receive the model's :class:`DataSpec` (before ``setup``): its training mode and batch transform."""
        if spec.train_mode not in ("sequence", "prefix"):
            raise DataError(f"unknown train_mode '{spec.train_mode}' (sequence | prefix)")
        self.spec = spec
        self._examples.pop("train", None)

    def examples(self, split: str) -> Examples:
        """The examples of ``split`` ("train", "val" or "test") under the connected spec."""
        if split not in self._examples:
            if self.corpus.fixed_splits:
                examples = self._fixed_examples(split)
            else:
                examples = self._leave_one_out(split)
            self._attach_candidates(split, examples)
            self._examples[split] = examples
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
            result = Examples(
                c.items, starts[keep], starts[keep] + train_len[keep] - 1, np.full(keep.sum(), -1), users[keep]
            )
            check_training_split(c, len(result))
            return result
        n_targets = np.clip(train_len - 1, 0, None)  # targets s[1..n-3]
        user = np.repeat(users, n_targets)
        step = np.arange(n_targets.sum()) - np.repeat(np.cumsum(n_targets) - n_targets, n_targets) + 1
        start = starts[user]
        end = start + step
        result = Examples(c.items, start, end, c.items[end], user)
        check_training_split(c, len(result))
        return result

    def _fixed_examples(self, split: str) -> Examples:
        name = {"val": "valid"}.get(split, split)
        splits = self.corpus.fixed_splits
        if name not in splits:
            name = "test" if split == "val" and "test" in splits else name
        if name not in splits:
            raise DataError(f"{self.corpus.name}: no '{split}' split (has {', '.join(splits)})")
        fs = splits[name]
        return Examples(fs.history, fs.offsets[:-1], fs.offsets[1:], fs.targets, fs.users)

    # -- candidate lists ------------------------------------------------------------------------------------------
    def _attach_candidates(self, split: str, examples: Examples) -> None:
        protocol = self.protocol
        sampled = protocol.num_candidates if protocol.candidates == "sampled" else 0
        path = protocol.candidates_path if protocol.candidates == "retriever" else None
        if sampled and split in ("val", "test"):
            seen_items, seen_offsets = self._interacted(examples)
            seed = (EVAL_CANDIDATES_SEED, ("val", "test").index(split))
            examples.candidates = sample_candidates(
                self.num_items, examples.target, seen_items, seen_offsets, sampled, seed, self.corpus.name
            )
        elif path:
            examples.candidates = retriever_candidates(path, split, examples.user, self.num_users, self.num_items)

    def _interacted(self, examples: Examples) -> tuple[np.ndarray, np.ndarray]:
        """Per example, the items its user interacted with, flat + offsets: the whole sequence under
        leave-one-out; the history and target of the example for sources with their own split."""
        c = self.corpus
        if not c.fixed_splits:
            starts, ends = c.offsets[examples.user], c.offsets[examples.user + 1]
            source = c.items
        else:
            starts, ends, source = examples.start, examples.end, examples.source
        lengths = ends - starts
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths + 1, out=offsets[1:])
        flat = np.empty(offsets[-1], dtype=np.int64)
        positions = np.arange(offsets[-1]) - np.repeat(offsets[:-1], lengths + 1)
        is_target = positions == np.repeat(lengths, lengths + 1)
        from_source = np.repeat(starts, lengths + 1) + positions
        flat[~is_target] = source[from_source[~is_target]]
        flat[is_target] = examples.target
        return flat, offsets

    # -- loaders --------------------------------------------------------------------------------------------
    def batch_dataset(self, split: str, train: bool) -> Dataset:
        ex = self.examples(split)
        sequence_targets = train and self.spec.train_mode == "sequence" and not self.corpus.fixed_splits
        length = self.train_len if sequence_targets else self.max_len
        with_seen = self.protocol.mask_seen and not train
        return ExampleDataset(ex, length, sequence_targets, self.spec.transform, with_seen)


class _ProtocolView:
    """A ``data:`` section seen as the whole config ``Protocol.from_config`` reads (for DataModules built without
    the builder, e.g. in tests): ``eval.mask_seen`` is off unless the section says otherwise."""

    def __init__(self, data_cfg) -> None:
        self.data = _Defaults(data_cfg, eval_candidates=0, candidates_path=None)
        self.eval = _Defaults(None, mask_seen=False)


class _Defaults:
    def __init__(self, section, **defaults) -> None:
        for key, default in defaults.items():
            setattr(self, key, getattr(section, key, default) if section is not None else default)


def sample_candidates(
    num_items: int,
    targets: np.ndarray,
    seen_items: np.ndarray,
    seen_offsets: np.ndarray,
    size: int,
    seed,
    name: str = "data",
) -> np.ndarray:
    """[E, size] candidate lists: column 0 the target, then ``size - 1`` distinct items drawn uniformly from the
    items example e never interacted with (``seen_items[seen_offsets[e]:seen_offsets[e+1]]``), reproducibly
    from ``seed``. Rejection sampling in one vectorised round; the rare rows it leaves short (users who saw most
    of the catalogue) are drawn exactly from their unseen items."""
    num_examples, wanted = len(targets), size - 1
    out = np.empty((num_examples, size), dtype=np.int64)
    out[:, 0] = targets
    if wanted == 0 or num_examples == 0:
        return out
    lengths = np.diff(seen_offsets)
    rows = np.repeat(np.arange(num_examples, dtype=np.int64), lengths)
    seen_keys = np.unique(rows * (num_items + 1) + seen_items)
    seen_count = np.bincount(seen_keys // (num_items + 1), minlength=num_examples)
    short = np.flatnonzero(num_items - seen_count < wanted)
    if len(short):
        raise DataError(
            f"{name}: data.eval_candidates={size} needs {wanted} items example {short[0]} never interacted with; "
            f"it has {num_items - seen_count[short[0]]}"
        )
    rng = np.random.default_rng(seed)
    draws_per_row = 2 * wanted + 16
    chunk = max(1, (1 << 22) // draws_per_row)
    retry: list[np.ndarray] = []
    for begin in range(0, num_examples, chunk):
        block = np.arange(begin, min(begin + chunk, num_examples))
        draws = rng.integers(1, num_items + 1, size=(len(block), draws_per_row))
        keys = block[:, None] * (num_items + 1) + draws
        found = np.searchsorted(seen_keys, keys).clip(max=len(seen_keys) - 1)
        valid = seen_keys[found] != keys
        order = np.argsort(draws, axis=1, kind="stable")
        ordered = np.take_along_axis(draws, order, axis=1)
        repeat_sorted = np.zeros_like(valid)
        repeat_sorted[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
        repeated = np.empty_like(valid)
        np.put_along_axis(repeated, order, repeat_sorted, axis=1)
        valid &= ~repeated
        full = valid.sum(axis=1) >= wanted
        first_valid = np.argsort(~valid, axis=1, kind="stable")[:, :wanted]
        out[block[full], 1:] = np.take_along_axis(draws, first_valid, axis=1)[full]
        retry.append(block[~full])
    for row in np.concatenate(retry):
        unseen = np.setdiff1d(np.arange(1, num_items + 1), seen_items[seen_offsets[row] : seen_offsets[row + 1]])
        out[row, 1:] = rng.choice(unseen, size=wanted, replace=False)
    return out


def retriever_candidates(path, split: str, users: np.ndarray, num_users: int, num_items: int) -> np.ndarray | None:
    """The rows of a candidates file (``zoo.data.candidates``) for the examples' ``users`` in ``split``, or
    None when the file has no lists for that split."""
    lists = load_candidates(path)
    if split not in lists:
        return None
    file_users, items = lists[split]
    if items.ndim != 2 or len(items) != len(file_users):
        raise DataError(f"{path}: '{split}' must be [users, K] item ids with one user index per row")
    if len(items) and (items.min() < 0 or items.max() > num_items):
        raise DataError(f"{path}: '{split}' has item ids outside 0..{num_items} (0 = padding)")
    if len(file_users) and (file_users.min() < 0 or file_users.max() >= num_users):
        raise DataError(f"{path}: '{split}' has user indices outside 0..{num_users - 1}")
    row_of = np.full(num_users, -1, dtype=np.int64)
    row_of[file_users] = np.arange(len(file_users))
    if len(np.unique(file_users)) != len(file_users):
        raise DataError(f"{path}: '{split}' lists a user twice")
    if (users < 0).any():
        raise DataError(f"{path}: the {split} examples have no user index to match candidate lists with")
    rows = row_of[users]
    if (rows < 0).any():
        missing = users[rows < 0]
        raise DataError(f"{path}: no '{split}' candidates for {len(np.unique(missing))} users (e.g. user {missing[0]})")
    return items[rows]
