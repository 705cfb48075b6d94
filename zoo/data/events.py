"""Raw interaction events -> a Corpus: the shared steps of raw sources (Amazon reviews, MovieLens ratings,
RecBole atomic files): integer codes for raw ids, the iterative k-core filter (``data.k_core``), and
chronological per-user sequences."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import numpy as np

from zoo.data.corpus import Corpus, first_appearance_codes

Source = TypeVar("Source", bound=Callable[..., Corpus])


def k_core_mask(users: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """Which interactions survive the iterative k-core filter: drop users and items with fewer than ``k``
    interactions until every remaining user and item has at least ``k`` (repeat interactions count)."""
    keep = np.ones(len(users), dtype=bool)
    if k <= 1:
        return keep
    user_count_size, item_count_size = int(users.max()) + 1, int(items.max()) + 1
    while True:
        user_count = np.bincount(users[keep], minlength=user_count_size)
        item_count = np.bincount(items[keep], minlength=item_count_size)
        survivors = keep & (user_count[users] >= k) & (item_count[items] >= k)
        if survivors.sum() == keep.sum():
            return keep
        keep = survivors


def chronological_corpus(
    name: str,
    users: np.ndarray,
    items: np.ndarray,
    times: np.ndarray,
    user_ids: list[str],
    item_ids: list[str],
    ratings: np.ndarray | None = None,
    item_numbering: str = "first_seen",
) -> Corpus:
    """Per-user chronological sequences from events given as integer codes into ``user_ids`` / ``item_ids``.

    Users keep the order of their codes (those without events are dropped); each user's events are sorted by
    time, stably, so equal times keep input order. Items are numbered 1..N either in order of first appearance
    in the concatenated sequences (``"first_seen"``: the S3-Rec numbering) or in the order of their codes
    (``"code"``), counting only items that occur."""
    if item_numbering not in ("first_seen", "code"):
        raise ValueError(f"item_numbering must be 'first_seen' or 'code', not {item_numbering!r}")
    order = np.lexsort((times, users))
    users, items, times = users[order], items[order], times[order]
    user_codes_used, user_new = np.unique(users, return_inverse=True)
    if item_numbering == "first_seen":
        item_new, item_codes_used = first_appearance_codes(items)
    else:
        item_codes_used, item_new = np.unique(items, return_inverse=True)
    counts = np.bincount(user_new, minlength=len(user_codes_used))
    offsets = np.zeros(len(user_codes_used) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return Corpus(
        name=name,
        item_ids=[""] + [item_ids[c] for c in item_codes_used],
        user_ids=[user_ids[c] for c in user_codes_used],
        offsets=offsets,
        items=item_new.astype(np.int64) + 1,
        timestamps=times.astype(np.float64),
        ratings=ratings[order].astype(np.float32) if ratings is not None else None,
    ).validate()


def handles_k_core(source: Source) -> Source:
    """Mark a source that applies ``data.k_core`` to its raw interactions itself (``load_corpus`` refuses
    ``k_core`` for any other source rather than silently ignoring it)."""
    source.handles_k_core = True
    return source
