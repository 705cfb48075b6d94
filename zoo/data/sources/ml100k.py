"""MovieLens-100K, the embedded default: the RecBole atomic files shipped inside the recbole wheel."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from zoo.data.corpus import Corpus
from zoo.data.sources.atomic import load_atomic
from zoo.errors import DataError
from zoo.registry import SOURCES


def ml100k_dir() -> Path:
    """Folder of ``ml-100k.inter`` inside the installed recbole package, found without importing recbole
    (its import fails under numpy 2)."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("ml100k needs the 'recbole' package installed (pip install recbole): it ships the files")
    path = Path(list(spec.submodule_search_locations)[0]) / "dataset_example" / "ml-100k"
    if not (path / "ml-100k.inter").is_file():
        raise DataError(f"recbole is installed but {path / 'ml-100k.inter'} is missing")
    return path


@SOURCES.register("ml100k")
def ml100k_source(cfg) -> Corpus:
    """943 users, 1,682 movies, 100,000 ratings; titles, year and genres per movie; age, gender, occupation
    per user. Every rating counts as an interaction, ordered by timestamp."""
    corpus = load_atomic("ml100k", ml100k_dir(), prefix="ml-100k")
    corpus.item_text["genres"] = corpus.item_text.pop("class")
    return corpus
