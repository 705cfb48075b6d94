"""S3-Rec / P5 sequence files: one line per user, ``user_id item_id item_id ...`` in chronological order.

The file's item id k is the corpus' internal item id k (so ids shared with other files, e.g. a title JSON, stay
valid) and users follow line order. ``seqfile`` reads any such file at ``data.path`` with an optional
item-id -> title JSON at ``data.titles``; the leaderboard sources (``beauty``, ``sports``, ``toys``, ``yelp``)
build on the same readers.
"""

from __future__ import annotations

import html
import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from zoo.data.cache import source_inputs
from zoo.data.corpus import Corpus
from zoo.data.download import check_input_file
from zoo.errors import DataError
from zoo.registry import SOURCES

SEQUENCE_LINE = "'user_id item_id [item_id ...]' (integers, item ids >= 1)"
PLACEHOLDER_TITLE = re.compile(r"title_\d+")
INT64_DIGITS = 18  # ids of up to 18 digits fit in int64 (its largest value has 19)
# a sequence file whose largest item id is this many times its number of distinct items (and above
# SPARSE_MIN_ID) is refused: its ids are not the 1..N numbering the zoo keeps as internal ids (see
# ``check_dense_ids``); renumbering would silently break every other file keyed by those ids (titles, maps)
SPARSE_FACTOR = 10
SPARSE_MIN_ID = 1000
log = logging.getLogger(__name__)


def read_sequence_file(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Parse a sequence file into (user ids in line order, offsets [U+1], flat item ids). Blank lines are
    skipped; a malformed line, an empty sequence, an item id < 1 or a repeated user id raises DataError naming
    ``file:line``."""
    path = check_input_file(Path(path), "sequence file")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a UTF-8 byte-order mark is dropped
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    numbered = [(lineno, line.split()) for lineno, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not numbered:
        raise DataError(f"{path}: no sequences (expected lines of {SEQUENCE_LINE})")
    lengths = np.fromiter((len(tokens) - 1 for _, tokens in numbered), dtype=np.int64, count=len(numbered))
    try:
        tokens = np.array(text.split(), dtype=np.int64)
    except (ValueError, OverflowError):
        tokens = None
    if tokens is None or (lengths == 0).any():
        _raise_first_malformed(path, numbered)
    starts = np.concatenate([[0], np.cumsum(lengths + 1)[:-1]])
    is_user = np.zeros(len(tokens), dtype=bool)
    is_user[starts] = True
    items = tokens[~is_user]
    if items.min() < 1:
        row = int(np.searchsorted(np.cumsum(lengths), np.flatnonzero(items < 1)[0], side="right"))
        raise DataError(
            f"{path}:{numbered[row][0]}: item id {items[items < 1][0]} out of range; expected {SEQUENCE_LINE}"
        )
    user_ids = [tokens_[0] for _, tokens_ in numbered]
    first_line: dict[str, int] = {}
    for lineno, tokens_ in numbered:
        seen = first_line.setdefault(tokens_[0], lineno)
        if seen != lineno:
            raise DataError(f"{path}:{lineno}: duplicate user id '{tokens_[0]}' (first on line {seen})")
    offsets = np.zeros(len(numbered) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return user_ids, offsets, items


def _raise_first_malformed(path: Path, numbered: list[tuple[int, list[str]]]) -> None:
    for lineno, tokens in numbered:
        if len(tokens) < 2:
            raise DataError(f"{path}:{lineno}: user '{tokens[0]}' has an empty sequence; expected {SEQUENCE_LINE}")
        for token in tokens:
            if not re.fullmatch(r"-?\d+", token):
                raise DataError(f"{path}:{lineno}: '{token}' is not an integer id; expected {SEQUENCE_LINE}")
            if len(token.lstrip("-")) > INT64_DIGITS and abs(int(token)) > np.iinfo(np.int64).max:
                raise DataError(f"{path}:{lineno}: id {token} does not fit a 64-bit integer; expected {SEQUENCE_LINE}")
    raise DataError(f"{path}: malformed sequence file; expected lines of {SEQUENCE_LINE}")


def read_json(path: Path) -> Any:
    """Parse a JSON file, reporting a missing or malformed file as one DataError line."""
    path = check_input_file(Path(path))
    try:
        with path.open(encoding="utf-8-sig") as f:  # a UTF-8 byte-order mark is dropped
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None


def read_item_map(path: Path, num_items: int) -> dict[int, Any]:
    """A JSON object keyed by item id (``{"1": ..., "2": ...}``) as int -> value; every key must be in 1..N."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object keyed by item id, got {type(data).__name__}")
    out: dict[int, Any] = {}
    for key, value in data.items():
        try:
            item = int(key)
        except ValueError:
            raise DataError(f"{path}: key {key!r} is not an item id") from None
        if not 1 <= item <= num_items:
            raise DataError(f"{path}: item id {item} out of range 1..{num_items} of the sequence file")
        out[item] = value
    return out


def clean_title(raw: Any) -> str:
    """A display title: HTML entities unescaped, whitespace trimmed; placeholders ``title_<id>`` -> ""."""
    if not isinstance(raw, str):
        return ""
    title = html.unescape(raw).strip()
    return "" if PLACEHOLDER_TITLE.fullmatch(title) else title


def titles_field(path: Path, num_items: int) -> list[str]:
    """The ``title`` item-text field (N+1 entries, "" = missing) from an item-id -> title JSON."""
    by_item = read_item_map(path, num_items)
    for item, title in by_item.items():
        if title is not None and not isinstance(title, str):
            kind = type(title).__name__
            raise DataError(f"{path}: item {item} has a {kind} title ({str(title)[:40]}), expected a string")
    return [""] + [clean_title(by_item.get(i)) for i in range(1, num_items + 1)]


def attributes_field(path: Path, num_items: int, names: dict[str, str] | None = None) -> list[str]:
    """The ``attributes`` item-text field from an item-id -> [attribute id, ...] JSON: the ids space-joined,
    or, given ``names`` (attribute id -> name), the names joined with ", " (names may contain spaces)."""
    by_item = read_item_map(path, num_items)
    field = [""] * (num_items + 1)
    for item, attributes in by_item.items():
        if not isinstance(attributes, list):
            raise DataError(f"{path}: item {item} maps to {type(attributes).__name__}, expected a list of ids")
        if names is None:
            field[item] = " ".join(str(a) for a in attributes)
        else:
            missing = [a for a in attributes if str(a) not in names]
            if missing:
                raise DataError(f"{path}: item {item} has attribute id {missing[0]} that datamaps.json does not name")
            field[item] = ", ".join(names[str(a)] for a in attributes)
    return field


def apply_datamaps(corpus: Corpus, path: Path) -> dict:
    """Replace the corpus' item / user ids by the raw ones (ASIN, Yelp business / user id) of a P5 / S3-Rec
    ``datamaps.json`` (``id2item``, ``id2user`` keyed by the sequence file's ids); returns the parsed maps."""
    maps = read_json(path)
    if not isinstance(maps, dict) or not {"id2item", "id2user"} <= maps.keys():
        raise DataError(f"{path}: expected a datamaps object with 'id2item' and 'id2user'")
    id2item, id2user = maps["id2item"], maps["id2user"]
    if len(id2item) != corpus.num_items:
        raise DataError(f"{path}: {len(id2item)} items in id2item, the sequence file has {corpus.num_items}")
    try:
        corpus.item_ids = [""] + [id2item[str(i)] for i in range(1, corpus.num_items + 1)]
        corpus.user_ids = [id2user[u] for u in corpus.user_ids]
    except KeyError as err:
        raise DataError(f"{path}: no raw id for {err.args[0]!r} of the sequence file") from None
    return maps


def load_sequence_corpus(name: str, path: Path, titles: Path | None = None) -> Corpus:
    """A corpus from a sequence file (internal item id = file item id), with optional titles."""
    user_ids, offsets, items = read_sequence_file(path)
    check_dense_ids(path, items)
    num_items = int(items.max())
    corpus = Corpus(
        name=name,
        item_ids=[""] + [str(i) for i in range(1, num_items + 1)],
        user_ids=user_ids,
        offsets=offsets,
        items=items,
    )
    if titles is not None:
        corpus.item_text["title"] = titles_field(titles, num_items)
    return corpus.validate()


def check_dense_ids(path: Path, items: np.ndarray) -> None:
    """Refuse a file whose item ids are far from 1..N (largest id 200,000 for 5 real items): the zoo keeps the
    file's ids as its item ids, so the model would score (and sample negatives from) mostly ids that never occur.
    Refusing is deliberate: renumbering would silently break the title JSON / id maps keyed by the file's ids."""
    largest = int(items.max())
    distinct = len(np.unique(items))
    if largest > SPARSE_MIN_ID and largest > SPARSE_FACTOR * distinct:
        raise DataError(
            f"{path}: item ids are sparse (largest {largest}, only {distinct} distinct items); renumber them 1..N "
            "(the zoo uses the file's ids as item ids)"
        )
    if largest > distinct:
        log.warning("%s: %d of the item ids 1..%d never occur", path, largest - distinct, largest)


def _seqfile_inputs(cfg) -> list[Path]:
    return [Path(p) for p in (cfg.path, cfg.titles) if p]


@SOURCES.register("seqfile")
@source_inputs(_seqfile_inputs)
def seqfile_source(cfg) -> Corpus:
    """Any S3-Rec-format sequence file at ``data.path`` (+ optional ``data.titles`` id -> title JSON)."""
    if not cfg.path:
        raise DataError("data.name=seqfile needs data.path=<sequence file: one 'user item item ...' line per user>")
    path = Path(cfg.path)
    return load_sequence_corpus(path.stem, path, Path(cfg.titles) if cfg.titles else None)
