"""Candidate lists written by a retriever (e.g. SASRec's top-50) and read by re-ranking methods (PALR).

Format: one ``.npz`` with, per split ("train", "val", "test"), an int64 array ``<split>`` of shape [users, K]
(item ids, best first) and ``<split>_users`` with the user index of each row. Written atomically.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from zoo.errors import DataError
from zoo.io import atomic_path

log = logging.getLogger(__name__)


def save_candidates(path: str | Path, lists: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """``lists[split] = (users [U], items [U, K])``."""
    arrays = {}
    for split, (users, items) in lists.items():
        arrays[split] = np.asarray(items, dtype=np.int64)
        arrays[f"{split}_users"] = np.asarray(users, dtype=np.int64)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    shown = ", ".join(f"{split} {len(users)}" for split, (users, _) in lists.items())
    log.info("candidates: %s rows written to %s", shown, path)


def load_candidates(path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"candidates file not found: {path} (write it with the retriever's export)")
    try:
        with np.load(path) as data:
            return {k: (data[f"{k}_users"], data[k]) for k in data.files if not k.endswith("_users")}
    except (OSError, ValueError, KeyError) as err:
        raise DataError(f"{path}: not a candidates file ({err})") from None
