"""Load a registered source into a Corpus and apply the generic filters of ``data:``."""

from __future__ import annotations

import zoo.data.sources  # noqa: F401  (registers the sources)
from zoo.data.corpus import Corpus
from zoo.registry import SOURCES


def load_corpus(cfg) -> Corpus:
    """The corpus of ``cfg.name`` (a ``DataConfig``), filtered by ``min_seq_len``."""
    corpus = SOURCES.get(cfg.name)(cfg)
    if cfg.min_seq_len:
        corpus = filter_short_users(corpus, cfg.min_seq_len)
    return corpus


def filter_short_users(corpus: Corpus, min_len: int) -> Corpus:
    """Drop users with fewer than ``min_len`` interactions (item ids are kept as they are)."""
    keep = corpus.lengths() >= min_len
    if keep.all():
        return corpus
    import numpy as np

    users = np.flatnonzero(keep)
    rows = np.concatenate([np.arange(corpus.offsets[u], corpus.offsets[u + 1]) for u in users])
    offsets = np.zeros(len(users) + 1, dtype=np.int64)
    np.cumsum(corpus.lengths()[users], out=offsets[1:])
    return Corpus(
        name=corpus.name,
        item_ids=corpus.item_ids,
        user_ids=[corpus.user_ids[u] for u in users],
        offsets=offsets,
        items=corpus.items[rows],
        timestamps=corpus.timestamps[rows] if corpus.timestamps is not None else None,
        ratings=corpus.ratings[rows] if corpus.ratings is not None else None,
        item_text=corpus.item_text,
        user_features={k: [v[u] for u in users] for k, v in corpus.user_features.items()},
        fixed_splits=corpus.fixed_splits,
    ).validate()
