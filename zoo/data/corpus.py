"""The canonical corpus every dataset source produces and every DataModule reads.

Items are numbered 1..N (0 is padding); users 0..U-1. Sequences are chronological and stored flat
(``items[offsets[u]:offsets[u+1]]``) so that a corpus of millions of interactions loads and caches fast.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from zoo.errors import DataError


@dataclass
class FixedSplit:
    """Examples of a source that ships its own split (e.g. the MSL sliding windows): history -> target."""

    users: np.ndarray  # int64 [E] user index of each example (-1 when unknown)
    history: np.ndarray  # int64 [H] flat item ids
    offsets: np.ndarray  # int64 [E+1] history of example e is history[offsets[e]:offsets[e+1]]
    targets: np.ndarray  # int64 [E]

    def __len__(self) -> int:
        return len(self.targets)


@dataclass
class Corpus:
    name: str
    item_ids: list[str]  # raw id of each internal item id; index 0 is the padding entry ""
    user_ids: list[str]  # raw id of each user index
    offsets: np.ndarray  # int64 [U+1]
    items: np.ndarray  # int64 [nnz], values in 1..N
    timestamps: np.ndarray | None = None  # float64 [nnz]
    ratings: np.ndarray | None = None  # float32 [nnz]
    item_text: dict[str, list[str]] = field(default_factory=dict)  # field -> N+1 strings, "" = missing
    user_features: dict[str, list[str]] = field(default_factory=dict)  # field -> U strings
    fixed_splits: dict[str, FixedSplit] = field(default_factory=dict)

    @property
    def num_items(self) -> int:
        return len(self.item_ids) - 1

    @property
    def num_users(self) -> int:
        return len(self.offsets) - 1

    @property
    def num_interactions(self) -> int:
        return int(self.offsets[-1])

    def sequence(self, user: int) -> np.ndarray:
        return self.items[self.offsets[user] : self.offsets[user + 1]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def title(self, item: int) -> str:
        """The item's title ("" when unknown)."""
        titles = self.item_text.get("title")
        return titles[item] if titles else ""

    def validate(self) -> Corpus:
        """Check the invariants every consumer relies on; raise DataError naming the first violation."""
        n = self.num_items
        if self.offsets.ndim != 1 or self.offsets[0] != 0 or np.any(np.diff(self.offsets) < 0):
            raise DataError(f"{self.name}: offsets must start at 0 and be non-decreasing")
        if self.offsets[-1] != len(self.items):
            raise DataError(f"{self.name}: offsets end at {self.offsets[-1]} but there are {len(self.items)} items")
        if len(self.user_ids) != self.num_users:
            raise DataError(f"{self.name}: {len(self.user_ids)} user ids for {self.num_users} sequences")
        empty = np.flatnonzero(np.diff(self.offsets) == 0)
        if len(empty):
            raise DataError(f"{self.name}: user {self.user_ids[empty[0]]!r} has an empty sequence")
        if len(self.items) and (self.items.min() < 1 or self.items.max() > n):
            bad = self.items[(self.items < 1) | (self.items > n)][0]
            raise DataError(f"{self.name}: item id {bad} out of range 1..{n}")
        for name, values in self.item_text.items():
            if len(values) != n + 1:
                raise DataError(f"{self.name}: item text '{name}' has {len(values)} entries, expected {n + 1}")
        for name, values in self.user_features.items():
            if len(values) != self.num_users:
                raise DataError(f"{self.name}: user feature '{name}' has {len(values)} entries")
        for arr_name in ("timestamps", "ratings"):
            arr = getattr(self, arr_name)
            if arr is not None and len(arr) != len(self.items):
                raise DataError(f"{self.name}: {arr_name} has {len(arr)} entries for {len(self.items)} interactions")
        return self

    @classmethod
    def from_sequences(
        cls,
        name: str,
        sequences: Sequence[Sequence[int]],
        num_items: int | None = None,
        user_ids: list[str] | None = None,
        item_ids: list[str] | None = None,
        **extra,
    ) -> Corpus:
        """Build from per-user lists of internal item ids (already 1..N)."""
        lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
        offsets = np.zeros(len(sequences) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        items = np.fromiter((i for s in sequences for i in s), dtype=np.int64, count=int(offsets[-1]))
        n = int(num_items if num_items is not None else (items.max() if len(items) else 0))
        return cls(
            name=name,
            item_ids=item_ids if item_ids is not None else [""] + [str(i) for i in range(1, n + 1)],
            user_ids=user_ids if user_ids is not None else [str(u + 1) for u in range(len(sequences))],
            offsets=offsets,
            items=items,
            **extra,
        ).validate()

    @classmethod
    def from_interactions(
        cls,
        name: str,
        users: Iterable[str],
        items: Iterable[str],
        timestamps: Iterable[float] | None = None,
        ratings: Iterable[float] | None = None,
    ) -> Corpus:
        """Build from raw (user, item, time) triples: ids are numbered in order of first appearance and each
        user's interactions are sorted by time (stable, so equal times keep file order)."""
        users = np.asarray(list(users), dtype=object)
        items_raw = np.asarray(list(items), dtype=object)
        if len(users) != len(items_raw):
            raise DataError(f"{name}: {len(users)} users for {len(items_raw)} items")
        if len(users) == 0:
            raise DataError(f"{name}: no interactions")
        user_codes, user_index = first_appearance_codes(users)
        item_codes, item_index = first_appearance_codes(items_raw)
        ts = np.asarray(list(timestamps), dtype=np.float64) if timestamps is not None else None
        rt = np.asarray(list(ratings), dtype=np.float32) if ratings is not None else None
        order = np.lexsort((ts, user_codes)) if ts is not None else np.argsort(user_codes, kind="stable")
        counts = np.bincount(user_codes, minlength=len(user_index))
        offsets = np.zeros(len(user_index) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        return cls(
            name=name,
            item_ids=[""] + [str(x) for x in item_index],
            user_ids=[str(x) for x in user_index],
            offsets=offsets,
            items=item_codes[order].astype(np.int64) + 1,
            timestamps=ts[order] if ts is not None else None,
            ratings=rt[order] if rt is not None else None,
        ).validate()

    def with_item_text(self, field_name: str, by_raw_id: dict[str, str]) -> Corpus:
        """Attach an item text field given raw item id -> text ("" for items without one)."""
        self.item_text[field_name] = [""] + [by_raw_id.get(raw, "") for raw in self.item_ids[1:]]
        return self


def first_appearance_codes(values) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes 0..K-1 numbered in order of first appearance, and the distinct values in that order
    (integers stay integers; anything else is compared as text). The one such encoder of the zoo."""
    values = np.asarray(values)
    if values.dtype.kind not in "iu":
        values = values.astype(str)
    uniq, first, inverse = np.unique(values, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty(len(uniq), dtype=np.int64)
    rank[order] = np.arange(len(uniq))
    return rank[inverse.reshape(-1)], uniq[order]
