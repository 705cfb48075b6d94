"""Amazon 2014 5-core Beauty, Sports_and_Outdoors and Toys_and_Games: three of the four leaderboard datasets.

Two routes to the same corpus, both under ``<data root>/<Folder>/`` (``Beauty``, ``Sports_and_Outdoors``,
``Toys_and_Games``):

* **S3-Rec sequence file** (default, ``data.k_core=0``): ``<Folder>.txt`` as published by S3-Rec (downloaded
  from RUCAIBox/CIKM2020-S3Rec at a pinned commit when missing, with ``<Folder>_item2attributes.json``). Item id k
  of the file is internal item id k; users follow line order. Optional files beside it add item text and raw ids:
  ``<Folder>_item2title.json`` (titles, HTML-unescaped; placeholders ``title_<id>`` count as missing), for Sports
  ``Sports_and_Outdoors_item2idgenrec_text.json`` -- **pseudo-titles** (3-8 lower-cased words taken from the
  title by IDGenRec, not the real titles; say so when reporting text-based results on Sports) -- stored as
  ``title``; ``datamaps.json`` (ASINs and reviewer ids); for Toys ``Toys_and_Games_item2p5id_asin.json`` (ASINs).
* **Raw processing** (``data.k_core=K > 0``): ``raw/reviews_<Folder>_5.json.gz`` and ``raw/meta_<Folder>.json.gz``
  from the Amazon 2014 release (downloaded when missing), processed as S3-Rec's ``data_process.py`` does:
  every review is an interaction, users in order of first appearance, each user's items sorted by time (stable),
  iterative K-core, items numbered in order of first appearance in the sequences. With K = 5 this gives the
  S3-Rec counts (a warning is logged otherwise). Item text from the metadata: ``title``, ``brand``,
  ``categories``, ``price``, and ``attributes`` (brand + categories as S3-Rec numbers them).
"""

from __future__ import annotations

import ast
import gzip
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from zoo.data.cache import source_inputs
from zoo.data.corpus import Corpus
from zoo.data.download import RemoteFile, data_root, require_file
from zoo.data.events import chronological_corpus, first_appearance_codes, handles_k_core, k_core_mask
from zoo.data.sources.seqfile import (
    apply_datamaps,
    attributes_field,
    clean_title,
    load_sequence_corpus,
    read_item_map,
)
from zoo.errors import DataError
from zoo.progress import read_lines
from zoo.registry import SOURCES

log = logging.getLogger(__name__)

S3REC_URL = "https://raw.githubusercontent.com/RUCAIBox/CIKM2020-S3Rec/2a81540ae18615d88ef88227b0c066e5b74781e5/data/"
AMAZON_2014_URL = "https://snap.stanford.edu/data/amazon/productGraph/categoryFiles/"
REVIEW_LINE = "a JSON object with reviewerID, asin and unixReviewTime"
META_LINE = "a Python-literal dict with an 'asin' key"


@dataclass(frozen=True)
class S3RecDataset:
    """One S3-Rec dataset folder: file names, the checksums of the published files, the expected counts."""

    name: str  # registered source name
    folder: str  # folder under the data root, stem of the S3-Rec files
    sequence_sha256: str
    attributes_sha256: str
    counts: tuple[int, int, int]  # users, items, interactions of the S3-Rec file
    title_file: str | None = None

    def folder_path(self, cfg) -> Path:
        return data_root(cfg) / self.folder

    @property
    def sequence_remote(self) -> RemoteFile:
        return RemoteFile(S3REC_URL + f"{self.folder}.txt", f"sha256:{self.sequence_sha256}")

    @property
    def attributes_remote(self) -> RemoteFile:
        return RemoteFile(S3REC_URL + f"{self.folder}_item2attributes.json", f"sha256:{self.attributes_sha256}")


AMAZON = {
    "beauty": S3RecDataset(
        "beauty",
        "Beauty",
        "226cce9c3105299ca0db9615d7d3fb32b3175e90da43100ae352599f0f0107b8",
        "129e40f67486f6877eff0f5318cfa8530ee8ac23d8b0d1de04e1bb7a2ba0b2d4",
        (22363, 12101, 198502),
        title_file="Beauty_item2title.json",
    ),
    "sports": S3RecDataset(
        "sports",
        "Sports_and_Outdoors",
        "2a095e0648872beb9982408958290f5d655db5be2911c3756b5446de9f0b8de2",
        "7fb10733ac4f1811384a52144cdefa7fcc7536fa80a7232c5da9bd789155c34b",
        (35598, 18357, 296337),
        title_file="Sports_and_Outdoors_item2idgenrec_text.json",
    ),
    "toys": S3RecDataset(
        "toys",
        "Toys_and_Games",
        "176c680c688d497598c4a89a03b402c0fe78d795e5db335c2e78dd5f2d778a3f",
        "d371acd25101eedac04afc727626464b7acec770c4eda708705d51eb76eb1ad0",
        (19412, 11924, 167597),
        title_file="Toys_and_Games_item2title.json",
    ),
}
TOYS_ASINS = "Toys_and_Games_item2p5id_asin.json"


# -- the S3-Rec sequence-file route ---------------------------------------------------------------------------
def sequence_files(dataset: S3RecDataset, cfg) -> dict[str, Path]:
    """The files of the sequence route (the sequence file is required, the others optional)."""
    folder = dataset.folder_path(cfg)
    files = {
        "sequences": folder / f"{dataset.folder}.txt",
        "attributes": folder / f"{dataset.folder}_item2attributes.json",
        "datamaps": folder / "datamaps.json",
    }
    if dataset.title_file:
        files["titles"] = folder / dataset.title_file
    if dataset.name == "toys":
        files["asins"] = folder / TOYS_ASINS
    return files


def fetch_sequence_files(dataset: S3RecDataset, cfg) -> dict[str, Path]:
    """Make sure the sequence file is there (downloading it, and then the attributes file, when missing)."""
    files = sequence_files(dataset, cfg)
    if not files["sequences"].is_file():
        require_file(files["sequences"], dataset.sequence_remote, cfg.download)
        try:
            require_file(files["attributes"], dataset.attributes_remote, cfg.download)
        except DataError as err:
            log.warning("%s: continuing without item attributes: %s", dataset.name, err)
    return files


def load_s3rec_amazon(dataset: S3RecDataset, cfg) -> Corpus:
    """The sequence-file route: the S3-Rec file plus whichever optional text / id files are present."""
    files = fetch_sequence_files(dataset, cfg)
    corpus = load_sequence_corpus(dataset.name, files["sequences"], files["titles"] if _has(files, "titles") else None)
    if _has(files, "attributes"):
        corpus.item_text["attributes"] = attributes_field(files["attributes"], corpus.num_items)
    if _has(files, "datamaps"):
        apply_datamaps(corpus, files["datamaps"])
    if _has(files, "asins"):
        by_item = read_item_map(files["asins"], corpus.num_items)
        try:
            corpus.item_ids = [""] + [by_item[i]["asin"] for i in range(1, corpus.num_items + 1)]
        except (KeyError, TypeError):
            raise DataError(f"{files['asins']}: expected {{item id: {{'asin': ...}}}} for all items") from None
    return corpus.validate()


def _has(files: dict[str, Path], key: str) -> bool:
    return key in files and files[key].is_file()


# -- the raw route: Amazon 2014 reviews + metadata ----------------------------------------------------------
def raw_files(dataset: S3RecDataset, cfg) -> dict[str, Path]:
    raw = dataset.folder_path(cfg) / "raw"
    return {
        "reviews": raw / f"reviews_{dataset.folder}_5.json.gz",
        "meta": raw / f"meta_{dataset.folder}.json.gz",
    }


def read_reviews(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """(reviewer ids, ASINs, unix times) of a reviews JSON-lines file (gzip or plain), in file order."""
    users, items, times = [], [], []
    with _open_text(path) as f:
        for lineno, line in enumerate(read_lines(f, path, f"reading {Path(path).name}", log), start=1):
            if not line.strip():
                continue
            try:
                review = json.loads(line)
                users.append(str(review["reviewerID"]))
                items.append(str(review["asin"]))
                times.append(int(review["unixReviewTime"]))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                raise DataError(f"{path}:{lineno}: expected {REVIEW_LINE}") from None
    if not users:
        raise DataError(f"{path}: no reviews")
    return users, items, np.asarray(times, dtype=np.int64)


_ASIN = re.compile(r"""['"]asin['"]\s*:\s*['"]([^'"]+)['"]""")


def read_meta(path: Path, asins: set[str]) -> dict[str, dict]:
    """Metadata dicts of the wanted ``asins`` in file order. Lines are Python literals (``ast.literal_eval``,
    never ``eval``); only lines whose ASIN is wanted are parsed, which keeps this fast on large categories."""
    meta: dict[str, dict] = {}
    with _open_text(path) as f:
        for lineno, line in enumerate(read_lines(f, path, f"reading {Path(path).name}", log), start=1):
            if not line.strip():
                continue
            found = _ASIN.search(line)
            if found is None:
                raise DataError(f"{path}:{lineno}: expected {META_LINE}")
            if found.group(1) not in asins:
                continue
            try:
                info = ast.literal_eval(line.strip())
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                raise DataError(f"{path}:{lineno}: expected {META_LINE}") from None
            if not isinstance(info, dict) or "asin" not in info:
                raise DataError(f"{path}:{lineno}: expected {META_LINE}")
            meta[str(info["asin"])] = info
    return meta


def _open_text(path: Path) -> TextIO:
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a file")
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8-sig")
    return path.open(encoding="utf-8-sig")


def meta_text(corpus: Corpus, meta: dict[str, dict]) -> None:
    """Attach title, brand, categories, price and S3-Rec's attribute ids (brand + categories below the
    top level, numbered in order of first appearance over the items in metadata order)."""
    n = corpus.num_items
    index = {asin: i for i, asin in enumerate(corpus.item_ids) if i}
    fields = {name: [""] * (n + 1) for name in ("title", "brand", "categories", "price", "attributes")}
    attribute_ids: dict[str, int] = {}
    for asin, info in meta.items():
        item = index[asin]
        fields["title"][item] = clean_title(info.get("title"))
        brand = info.get("brand")
        fields["brand"][item] = str(brand).strip() if brand is not None else ""
        paths = info.get("categories") or []
        below_top = [c for path in paths if isinstance(path, list) for c in path[1:]]
        fields["categories"][item] = ", ".join(dict.fromkeys(below_top))
        fields["price"][item] = str(info["price"]) if info.get("price") is not None else ""
        named = ([str(brand)] if "brand" in info else []) + [str(c) for c in below_top]
        ids = [attribute_ids.setdefault(a, len(attribute_ids) + 1) for a in named]
        fields["attributes"][item] = " ".join(map(str, ids))
    corpus.item_text.update(fields)


def load_raw_amazon(name: str, reviews: Path, meta: Path | None, k_core: int) -> Corpus:
    """The S3-Rec processing of Amazon 2014 review + metadata files (see the module docstring)."""
    users_raw, items_raw, times = read_reviews(reviews)
    users, user_index = first_appearance_codes(users_raw)
    items, item_index = first_appearance_codes(items_raw)
    keep = k_core_mask(users, items, k_core)
    if not keep.any():
        raise DataError(f"{reviews}: no interactions survive the {k_core}-core filter")
    corpus = chronological_corpus(
        name, users[keep], items[keep], times[keep], list(user_index), list(item_index), item_numbering="first_seen"
    )
    if meta is not None:
        meta_text(corpus, read_meta(meta, set(corpus.item_ids[1:])))
    return corpus.validate()


# -- the registered sources -------------------------------------------------------------------------------------
def amazon_inputs(dataset: S3RecDataset, cfg) -> list[Path]:
    """The files a source reads under its settings (for the corpus cache key)."""
    files = raw_files(dataset, cfg) if cfg.k_core else sequence_files(dataset, cfg)
    return list(files.values())


def load_amazon(dataset: S3RecDataset, cfg) -> Corpus:
    """The sequence-file route, or the raw route when ``data.k_core > 0``."""
    if not cfg.k_core:
        return load_s3rec_amazon(dataset, cfg)
    files = raw_files(dataset, cfg)
    for path in files.values():
        require_file(path, RemoteFile(AMAZON_2014_URL + path.name), cfg.download)
    corpus = load_raw_amazon(dataset.name, files["reviews"], files["meta"], cfg.k_core)
    got = (corpus.num_users, corpus.num_items, corpus.num_interactions)
    if cfg.k_core == 5 and got != dataset.counts:
        log.warning(
            "%s: raw 5-core gave users/items/interactions %s; the S3-Rec file has %s", dataset.name, got, dataset.counts
        )
    return corpus


@SOURCES.register("beauty")
@handles_k_core
@source_inputs(lambda cfg: amazon_inputs(AMAZON["beauty"], cfg))
def beauty_source(cfg) -> Corpus:
    """Amazon 2014 5-core Beauty: 22,363 users, 12,101 items, 198,502 interactions; real titles."""
    return load_amazon(AMAZON["beauty"], cfg)


@SOURCES.register("sports")
@handles_k_core
@source_inputs(lambda cfg: amazon_inputs(AMAZON["sports"], cfg))
def sports_source(cfg) -> Corpus:
    """Amazon 2014 5-core Sports_and_Outdoors: 35,598 users, 18,357 items, 296,337 interactions; the
    ``title`` field holds IDGenRec pseudo-titles (a few words of the title), not the real titles."""
    return load_amazon(AMAZON["sports"], cfg)


@SOURCES.register("toys")
@handles_k_core
@source_inputs(lambda cfg: amazon_inputs(AMAZON["toys"], cfg))
def toys_source(cfg) -> Corpus:
    """Amazon 2014 5-core Toys_and_Games: 19,412 users, 11,924 items, 167,597 interactions; real titles."""
    return load_amazon(AMAZON["toys"], cfg)
