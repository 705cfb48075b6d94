"""Load a registered source into a Corpus, apply the generic filters of ``data:``, and cache the result.

``load_corpus`` is what every DataModule calls: the source named by ``data.name`` builds the corpus (from the
data root, downloading missing upstream files), ``data.min_seq_len`` drops short users, and with
``data.cache`` the result is stored in the corpus cache (``zoo.data.cache``) so the next run reads it back.
"""

from __future__ import annotations

import logging
import time

import numpy as np

import zoo.data.sources  # noqa: F401  (registers the sources)
from zoo.data.cache import cached
from zoo.data.corpus import Corpus
from zoo.errors import ConfigError, DataError
from zoo.registry import SOURCES

log = logging.getLogger(__name__)
LEAVE_ONE_OUT_MIN = 3  # a user needs a training item, a validation target and a test target
TRAIN_EXAMPLE_MIN = 4  # ... and two training items for one training example (history -> next item)


def load_corpus(cfg) -> Corpus:
    """The corpus of ``cfg.name`` (a ``DataConfig``), filtered by ``min_seq_len``, cached when ``cfg.cache``."""
    source = SOURCES.get(cfg.name)
    if cfg.k_core and not getattr(source, "handles_k_core", False):
        raw = ", ".join(n for n in SOURCES.names() if getattr(SOURCES.get(n), "handles_k_core", False))
        raise ConfigError(
            f"data.k_core={cfg.k_core}: source '{cfg.name}' reads already-filtered data; k-core applies to raw "
            f"sources ({raw})"
        )

    def build() -> Corpus:
        corpus = source(cfg)
        return filter_short_users(corpus, cfg.min_seq_len) if cfg.min_seq_len else corpus

    if cfg.cache:
        corpus = cached(cfg, cfg.name, source, build)
    else:
        started = time.monotonic()
        corpus = build()
        log.info("%s: corpus built in %.1f s (data.cache=false: not cached)", cfg.name, time.monotonic() - started)
    return warn_short_users(corpus)


def check_training_split(corpus: Corpus, num_examples: int) -> None:
    """DataError when the leave-one-out training split of ``corpus`` has no example (every user is shorter than
    ``TRAIN_EXAMPLE_MIN``). Called by the DataModule where it builds the training examples."""
    if num_examples:
        return
    longest = int(corpus.lengths().max()) if corpus.num_users else 0
    raise DataError(
        f"{corpus.name}: the training split is empty: no user has the {TRAIN_EXAMPLE_MIN} interactions "
        f"leave-one-out needs for a training example (longest has {longest})"
    )


def warn_short_users(corpus: Corpus) -> Corpus:
    """Under leave-one-out (no split shipped with the data): a warning with the count of users too short to be
    evaluated, who would otherwise be left out of validation and test without notice."""
    if corpus.fixed_splits or corpus.num_users == 0:
        return corpus
    lengths = corpus.lengths()
    short = int((lengths < LEAVE_ONE_OUT_MIN).sum())
    if short:
        log.warning(
            "%s: %d of %d users have fewer than %d interactions and are left out of validation and test",
            corpus.name,
            short,
            corpus.num_users,
            LEAVE_ONE_OUT_MIN,
        )
    return corpus


def filter_short_users(corpus: Corpus, min_len: int) -> Corpus:
    """Drop users with fewer than ``min_len`` interactions (item ids are kept as they are)."""
    keep = corpus.lengths() >= min_len
    if keep.all():
        return corpus
    if not keep.any():
        raise DataError(f"{corpus.name}: no user has the {min_len} interactions data.min_seq_len asks for")
    users = np.flatnonzero(keep)
    rows = np.flatnonzero(np.repeat(keep, corpus.lengths()))
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
