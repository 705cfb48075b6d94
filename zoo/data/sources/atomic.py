"""RecBole atomic files (``.inter``, ``.item``, ``.user`` with typed headers such as ``item_id:token``).

Every problem is reported as one line naming the file (and line): a missing header type, a row with the wrong
number of fields, a value that is not a number in a ``float`` column, a missing timestamp, a repeated key in
``.item`` / ``.user``. ``data.k_core`` applies an iterative k-core to the ``.inter`` rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zoo.data.cache import source_inputs
from zoo.data.corpus import Corpus
from zoo.data.download import check_input_file
from zoo.data.events import first_appearance_codes, handles_k_core, k_core_mask
from zoo.errors import DataError
from zoo.registry import SOURCES

ATOMIC_TYPES = ("token", "token_seq", "float", "float_seq")


@dataclass
class AtomicTable:
    """The columns of one atomic file (floats for ``float`` fields, strings otherwise) and the file line of
    each row, for error messages."""

    path: Path
    columns: dict[str, list]
    lines: list[int]

    def __contains__(self, name: str) -> bool:
        return name in self.columns

    def __getitem__(self, name: str) -> list:
        return self.columns[name]

    def get(self, name: str) -> list | None:
        return self.columns.get(name)

    def require(self, *names: str) -> None:
        for name in names:
            if name not in self.columns:
                raise DataError(f"{self.path}:1: needs a '{name}' column (has {', '.join(self.columns)})")

    def unique_keys(self, key: str) -> dict[str, int]:
        """Row index of each value of ``key``; a value on two rows is an error naming both lines."""
        index: dict[str, int] = {}
        for row, value in enumerate(self.columns[key]):
            first = index.setdefault(value, row)
            if first != row:
                raise DataError(
                    f"{self.path}:{self.lines[row]}: duplicate {key} {value!r} (first on line {self.lines[first]})"
                )
        return index


def read_atomic(path: Path) -> AtomicTable:
    """Read one atomic file; DataError with ``file:line`` and what was expected on any malformed line."""
    path = check_input_file(Path(path), "atomic file")
    with path.open(encoding="utf-8-sig", newline="") as f:  # a UTF-8 byte-order mark is dropped
        try:
            raw_lines = f.read().split("\n")
        except UnicodeDecodeError as err:
            raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    header = raw_lines[0].rstrip("\r").split("\t") if raw_lines and raw_lines[0].strip() else []
    if not header:
        raise DataError(f"{path}:1: expected a header of tab-separated 'name:type' columns")
    names, kinds = [], []
    for col in header:
        name, _, kind = col.partition(":")
        if kind not in ATOMIC_TYPES or not name:
            raise DataError(f"{path}:1: column '{col}' must be name:type with type one of {', '.join(ATOMIC_TYPES)}")
        if name in names:
            raise DataError(f"{path}:1: column '{name}' appears twice")
        names.append(name)
        kinds.append(kind)
    columns: dict[str, list] = {n: [] for n in names}
    lines: list[int] = []
    expected = "\t".join(header)
    for lineno, line in enumerate(raw_lines[1:], start=2):
        line = line.rstrip("\r")
        if not line:
            continue
        values = line.split("\t")
        if len(values) != len(names):
            raise DataError(
                f"{path}:{lineno}: expected {len(names)} tab-separated fields ({expected}), got {len(values)}"
            )
        for name, kind, value in zip(names, kinds, values):
            if kind == "float":
                try:
                    columns[name].append(float(value) if value else float("nan"))
                except ValueError:
                    raise DataError(f"{path}:{lineno}: field '{name}' expects a float, got {value!r}") from None
            else:
                columns[name].append(value)
        lines.append(lineno)
    return AtomicTable(path, columns, lines)


def load_atomic(
    name: str, directory: Path, prefix: str | None = None, title_field: str | None = None, k_core: int = 0
) -> Corpus:
    """Load ``<prefix>.inter`` (+ optional ``.item``/``.user``) from ``directory`` into a Corpus."""
    directory = Path(directory)
    prefix = prefix or directory.name
    inter = read_atomic(directory / f"{prefix}.inter")
    inter.require("user_id", "item_id")
    if not inter.lines:
        raise DataError(f"{inter.path}: no interactions")
    timestamps = inter.get("timestamp")
    if timestamps is not None:
        timestamps = _numeric_column(inter, "timestamp")
        missing = np.flatnonzero(np.isnan(np.asarray(timestamps, dtype=np.float64)))
        if len(missing):
            raise DataError(f"{inter.path}:{inter.lines[missing[0]]}: empty timestamp (expected a number)")
    users, items = inter["user_id"], inter["item_id"]
    ratings = inter.get("rating")
    if k_core:
        keep = k_core_mask(first_appearance_codes(users)[0], first_appearance_codes(items)[0], k_core)
        if not keep.any():
            raise DataError(f"{inter.path}: no interactions survive the {k_core}-core filter")
        rows = np.flatnonzero(keep)
        users, items = [users[r] for r in rows], [items[r] for r in rows]
        timestamps = [timestamps[r] for r in rows] if timestamps is not None else None
        ratings = [ratings[r] for r in rows] if ratings is not None else None
    corpus = Corpus.from_interactions(name, users, items, timestamps, ratings)
    item_file = directory / f"{prefix}.item"
    if item_file.is_file():
        table = read_atomic(item_file)
        table.require("item_id")
        table.unique_keys("item_id")
        for field_name, values in table.columns.items():
            if field_name == "item_id":
                continue
            text_name = "title" if field_name in (title_field, "movie_title", "title") else field_name
            corpus.with_item_text(text_name, {k: _text(v) for k, v in zip(table["item_id"], values)})
    user_file = directory / f"{prefix}.user"
    if user_file.is_file():
        table = read_atomic(user_file)
        table.require("user_id")
        row_of = table.unique_keys("user_id")
        for field_name, values in table.columns.items():
            if field_name != "user_id":
                corpus.user_features[field_name] = [
                    _text(values[row_of[u]]) if u in row_of else "" for u in corpus.user_ids
                ]
    return corpus.validate()


def _numeric_column(table: AtomicTable, name: str) -> list[float]:
    """A column as floats, whether typed ``float`` or ``token``; DataError naming the line of a non-number (e.g.
    a date string in a ``timestamp:token`` column: the zoo orders by numeric time, write Unix seconds)."""
    values = table[name]
    out = []
    for row, value in enumerate(values):
        if isinstance(value, float):
            out.append(value)
            continue
        try:
            out.append(float(value) if value != "" else float("nan"))
        except ValueError:
            raise DataError(
                f"{table.path}:{table.lines[row]}: field '{name}' expects a number (e.g. Unix seconds), got {value!r}"
            ) from None
    return out


def _text(value) -> str:
    """A field value as text ("" for a missing float)."""
    if isinstance(value, float):
        return "" if np.isnan(value) else f"{value:g}"
    return value


def _atomic_inputs(cfg) -> list[Path]:
    if not cfg.path:
        return []
    folder = Path(cfg.path)
    return [folder / f"{folder.name}.{ext}" for ext in ("inter", "item", "user")]


@SOURCES.register("atomic")
@handles_k_core
@source_inputs(_atomic_inputs)
def atomic_source(cfg) -> Corpus:
    """Any RecBole atomic dataset: ``data.path`` is the folder holding ``<name>.inter`` etc."""
    if not cfg.path:
        raise DataError("data.name=atomic needs data.path=<folder with <name>.inter [.item .user]>")
    return load_atomic(Path(cfg.path).name, Path(cfg.path), k_core=cfg.k_core)
