"""Amazon Reviews 2018 5-core categories of the Laser paper (Industrial_and_Scientific, Arts_Crafts_and_Sewing,
Pet_Supplies), processed as the paper's release (``data/process.py``) does, with its one defect fixed:

1. keep the reviews whose item has metadata with a title (the release keeps items with title, brand and category;
   brand and category are kept as item text when present);
2. keep the users with more than 3 such interactions;
3. keep a **seeded** random 20% of those users (each user independently with probability 1/5, the release's
   ``random.randint(0, 4) == 0``, which is unseeded there: every run of the release gets another data set). The
   sample is drawn with ``numpy.random.default_rng(SAMPLE_SEED)`` over the eligible users in order of first
   appearance, so the corpus is the same on every machine;
4. sort each user's reviews by time (stably); users and items are numbered in order of first appearance.

Files, under ``<data root>/amazon2018/``: ``<Category>_5.json.gz`` (reviews, JSON lines with reviewerID, asin,
unixReviewTime) and ``meta_<Category>.json.gz`` (JSON lines with asin, title, brand, category), downloaded from the
UCSD release when missing (offline, or with ``data.download=false``: one line naming the URL and the path).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np

from zoo.data.cache import source_inputs
from zoo.data.corpus import Corpus
from zoo.data.download import RemoteFile, data_root, require_file
from zoo.data.events import chronological_corpus, first_appearance_codes
from zoo.data.sources.seqfile import clean_title
from zoo.errors import DataError
from zoo.registry import SOURCES

FOLDER = "amazon2018"
REVIEWS_URL = "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2/categoryFilesSmall/"
META_URL = "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2/metaFiles2/"
CATEGORIES = {
    "amazon2018_industrial": "Industrial_and_Scientific",
    "amazon2018_arts": "Arts_Crafts_and_Sewing",
    "amazon2018_pets": "Pet_Supplies",
}
MIN_INTERACTIONS = 4  # "more than 3"
USER_FRACTION = 0.2
SAMPLE_SEED = 42


def files(category: str, cfg) -> dict[str, Path]:
    folder = data_root(cfg) / FOLDER
    return {"reviews": folder / f"{category}_5.json.gz", "meta": folder / f"meta_{category}.json.gz"}


def _json_lines(path: Path, what: str):
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    raise DataError(f"{path}:{lineno}: expected {what}") from None
                if not isinstance(record, dict):
                    raise DataError(f"{path}:{lineno}: expected {what}")
                yield lineno, record
    except (OSError, EOFError) as err:
        raise DataError(f"{path}: unreadable ({str(err).splitlines()[0]})") from None


def read_meta(path: Path) -> dict[str, dict]:
    """ASIN -> {title, brand, categories} of the metadata lines with a title."""
    meta: dict[str, dict] = {}
    for lineno, info in _json_lines(path, "a JSON object with an 'asin' key"):
        if "asin" not in info:
            raise DataError(f"{path}:{lineno}: expected a JSON object with an 'asin' key")
        title = clean_title(info.get("title"))
        if not title:
            continue
        category = info.get("category") or []
        meta[str(info["asin"])] = {
            "title": title,
            "brand": clean_title(info.get("brand")),
            "categories": ", ".join(dict.fromkeys(clean_title(c) for c in category[1:] if clean_title(c))),
        }
    return meta


def read_reviews(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    users, items, times = [], [], []
    for lineno, review in _json_lines(path, "a JSON object with reviewerID, asin and unixReviewTime"):
        try:
            users.append(str(review["reviewerID"]))
            items.append(str(review["asin"]))
            times.append(int(review["unixReviewTime"]))
        except (KeyError, TypeError, ValueError):
            raise DataError(
                f"{path}:{lineno}: expected a JSON object with reviewerID, asin and unixReviewTime"
            ) from None
    if not users:
        raise DataError(f"{path}: no reviews")
    return users, items, np.asarray(times, dtype=np.int64)


def process(
    name: str,
    reviews: Path,
    meta: Path,
    min_interactions: int = MIN_INTERACTIONS,
    fraction: float = USER_FRACTION,
    seed: int = SAMPLE_SEED,
) -> Corpus:
    """The paper's processing (module docstring): described items, users with >= ``min_interactions``, a seeded
    ``fraction`` of them, chronological sequences."""
    if not 0.0 < fraction <= 1.0:
        raise DataError(f"user fraction must be in (0, 1], got {fraction}")
    info = read_meta(meta)
    users_raw, items_raw, times = read_reviews(reviews)
    described = np.fromiter((asin in info for asin in items_raw), dtype=bool, count=len(items_raw))
    users, user_index = first_appearance_codes(users_raw)
    counts = np.bincount(users[described], minlength=len(user_index))
    eligible = np.flatnonzero(counts >= min_interactions)  # codes are in order of first appearance
    draw = np.random.default_rng(seed).random(len(eligible))
    sampled = np.zeros(len(user_index), dtype=bool)
    sampled[eligible[draw < fraction]] = True
    keep = described & sampled[users]
    if not keep.any():
        raise DataError(f"{reviews}: no user has {min_interactions} described reviews in the {fraction:.0%} sample")
    items, item_index = first_appearance_codes(np.asarray(items_raw, dtype=object)[keep].tolist())
    corpus = chronological_corpus(
        name,
        users[keep],
        items,
        times[keep],
        [str(u) for u in user_index],
        [str(i) for i in item_index],
        item_numbering="first_seen",
    )
    for field in ("title", "brand", "categories"):
        corpus.item_text[field] = [""] + [info[asin][field] for asin in corpus.item_ids[1:]]
    return corpus.validate()


def _register(name: str, category: str) -> None:
    @SOURCES.register(name)
    @source_inputs(lambda cfg: list(files(category, cfg).values()))
    def source(cfg) -> Corpus:
        paths = files(category, cfg)
        require_file(paths["reviews"], RemoteFile(REVIEWS_URL + paths["reviews"].name), cfg.download)
        require_file(paths["meta"], RemoteFile(META_URL + paths["meta"].name), cfg.download)
        return process(name, paths["reviews"], paths["meta"])

    source.__doc__ = f"Amazon 2018 5-core {category} in the Laser paper's processing (seeded 20% user sample)."


for _name, _category in CATEGORIES.items():
    _register(_name, _category)
