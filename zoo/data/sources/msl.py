"""The sliding-window data of the MSL paper (WANGBohaO-jpg/MSL ``data/``): its own split, its own item ids.

A dataset folder holds ``id2name4Rec.json`` (item id -> title) and CSV files with the header
``user_id,item_ids,...``, where ``item_ids`` is a JSON list of up to 10 history ids followed by the target id.

* ``train``: ``train_10000.csv`` (the paper's 10k sample for LLM tuning) when present, else ``train.csv``;
  ``data.path`` may also name a CSV file directly, which is then the training file (its folder holds the rest).
* ``test``: ``test.csv`` (required).
* ``valid``: ``valid.csv`` when present; **otherwise validation uses the test rows** (the MSL release has no
  validation file), so a run that selects checkpoints on ``val/*`` then selects on test: benchmarks on this
  source train a fixed budget and test the final weights.

``data.path`` is a dataset folder, a CSV inside one, or a dataset name under ``<data root>/MSL/`` (e.g.
``Amazon_Books``, ``Toy``). Titles are HTML-unescaped. The corpus's per-user sequence (for methods that read
sequences rather than the fixed split) is the user's latest training row, or the history of their earliest
evaluation row for users without training rows -- never an evaluation target.
"""

from __future__ import annotations

import csv
import html
import json
from pathlib import Path

import numpy as np

from zoo.data.corpus import Corpus, FixedSplit
from zoo.errors import DataError
from zoo.registry import SOURCES

TITLES_FILE = "id2name4Rec.json"
TRAIN_FILES = ("train_10000.csv", "train.csv")


def resolve_msl_folder(cfg) -> tuple[Path, Path | None]:
    """The dataset folder and, when ``data.path`` names a CSV, that training file."""
    if not cfg.path:
        raise DataError("data.name=msl needs data.path=<dataset folder | train csv | dataset name, e.g. Amazon_Books>")
    path = Path(cfg.path).expanduser()
    if path.suffix == ".csv":
        if not path.is_file():
            raise DataError(f"msl: training file not found: {path}")
        return path.parent, path
    if path.is_dir():
        return path, None
    from zoo.data.download import data_root

    folder = data_root(cfg) / "MSL" / cfg.path
    if not folder.is_dir():
        raise DataError(f"msl: no dataset folder at {path} or {folder} (expected {TITLES_FILE} and test.csv there)")
    return folder, None


def read_titles(path: Path) -> dict[str, str]:
    if path.is_dir():
        raise DataError(f"msl: {path}: is a directory, expected a file")
    if not path.is_file():
        raise DataError(f"msl: missing {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
    if not isinstance(data, dict) or not data:
        raise DataError(f"{path}: expected a non-empty object mapping item id -> title")
    bad = next((k for k, v in data.items() if not isinstance(v, str)), None)
    if bad is not None:
        raise DataError(f"{path}: item {bad} has a {type(data[bad]).__name__} title, expected a string")
    return {str(k): html.unescape(str(v)) for k, v in data.items()}


def read_windows(path: Path, known_items: dict[str, int]) -> tuple[list[str], list[list[int]], list[float]]:
    """Rows of an MSL CSV: raw user ids, internal item id lists (history + target) and timestamps."""
    users, windows, times = [], [], []
    if path.is_dir():
        raise DataError(f"msl: {path}: is a directory, expected a file")
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header or "user_id" not in header or "item_ids" not in header:
            raise DataError(f"{path}:1: expected a header with user_id and item_ids, got {header}")
        col_user, col_items = header.index("user_id"), header.index("item_ids")
        col_time = header.index("timestamp") if "timestamp" in header else None
        for row in reader:
            lineno = reader.line_num
            if not row:
                continue
            if len(row) != len(header):
                raise DataError(f"{path}:{lineno}: expected {len(header)} fields, got {len(row)}")
            try:
                raw_items = json.loads(row[col_items])
            except json.JSONDecodeError:
                raise DataError(f"{path}:{lineno}: item_ids is not a JSON list: {row[col_items][:60]!r}") from None
            if not isinstance(raw_items, list) or len(raw_items) < 2:
                raise DataError(f"{path}:{lineno}: item_ids needs a history and a target, got {row[col_items][:60]!r}")
            items = []
            for raw in raw_items:
                item = known_items.get(str(raw))
                if item is None:
                    raise DataError(f"{path}:{lineno}: item id {raw!r} is not in {TITLES_FILE}")
                items.append(item)
            try:
                times.append(float(row[col_time]) if col_time is not None else float(len(times)))
            except ValueError:
                raise DataError(f"{path}:{lineno}: timestamp {row[col_time]!r} is not a number") from None
            users.append(row[col_user])
            windows.append(items)
    if not windows:
        raise DataError(f"{path}: no rows")
    return users, windows, times


def _split(windows: list[list[int]], users: list[str], user_index: dict[str, int]) -> FixedSplit:
    lengths = np.array([len(w) - 1 for w in windows], dtype=np.int64)
    offsets = np.zeros(len(windows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return FixedSplit(
        users=np.array([user_index[u] for u in users], dtype=np.int64),
        history=np.array([i for w in windows for i in w[:-1]], dtype=np.int64),
        offsets=offsets,
        targets=np.array([w[-1] for w in windows], dtype=np.int64),
    )


def load_msl(folder: Path, train_file: Path | None = None, name: str | None = None) -> Corpus:
    """Read one MSL dataset folder into a Corpus with ``fixed_splits`` train (if any) / valid / test."""
    titles = read_titles(folder / TITLES_FILE)
    raw_ids = sorted(titles, key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else 0, k))
    known = {raw: i + 1 for i, raw in enumerate(raw_ids)}
    if train_file is None:
        train_file = next((folder / f for f in TRAIN_FILES if (folder / f).is_file()), None)
    files = {"train": train_file, "valid": folder / "valid.csv", "test": folder / "test.csv"}
    if not files["test"].is_file():
        raise DataError(f"msl: missing {files['test']}")
    read = {split: read_windows(path, known) for split, path in files.items() if path is not None and path.is_file()}
    user_index: dict[str, int] = {}
    for users, _, _ in read.values():
        for u in users:
            user_index.setdefault(u, len(user_index))
    best: dict[int, tuple[tuple, list[int]]] = {}
    for split, (users, windows, times) in read.items():
        for row, (u, window, t) in enumerate(zip(users, windows, times)):
            # the latest training row; else the earliest evaluation row's history (it holds no evaluation target)
            key = (1, t, row) if split == "train" else (0, -t, -row)
            sequence = window if split == "train" else window[:-1]
            if user_index[u] not in best or key > best[user_index[u]][0]:
                best[user_index[u]] = (key, sequence)
    sequences = [best[u][1] for u in range(len(user_index))]
    corpus = Corpus.from_sequences(
        name or f"msl/{folder.name}",
        sequences,
        num_items=len(raw_ids),
        user_ids=list(user_index),
        item_ids=[""] + raw_ids,
    )
    corpus.item_text["title"] = [""] + [titles[raw] for raw in raw_ids]
    splits = {split: _split(windows, users, user_index) for split, (users, windows, _) in read.items()}
    splits.setdefault("valid", splits["test"])
    corpus.fixed_splits = splits
    return corpus.validate()


@SOURCES.register("msl")
def msl_source(cfg) -> Corpus:
    """The MSL paper's sliding-window data (Amazon_Books, Toy); see the module docstring."""
    folder, train_file = resolve_msl_folder(cfg)
    return load_msl(folder, train_file)
