"""Shared fixtures: the real datasets folder, a temporary run root, and the overrides that shrink any recipe to a
few batches (the recipes themselves are tested, not separate test configs)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"

# shrink a real recipe to seconds: one epoch of two small batches, one validation and one test batch
SHRINK = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "trainer.enable_progress_bar=false",
    "data.num_workers=0",
    "data.batch_size=32",
    "data.eval_batch_size=16",
]


@pytest.fixture(autouse=True, scope="session")
def _data_root():
    """Point the zoo at the offline copies of the public datasets when they are there."""
    if SHARED_DATASETS.is_dir() and "ZOO_DATA_DIR" not in os.environ:
        os.environ["ZOO_DATA_DIR"] = str(SHARED_DATASETS)
    yield


@pytest.fixture(autouse=True)
def _zoo_logger():
    """Each test starts with the zoo logger as the previous one found it (an in-process ``zoo.run.main`` sets it up,
    ``-q`` quiets it): no test sees another's log level."""
    import logging

    logger = logging.getLogger("zoo")
    level, handlers = logger.level, list(logger.handlers)
    yield
    logger.setLevel(level)
    logger.handlers[:] = handlers


@pytest.fixture
def run_root(tmp_path: Path) -> Path:
    return tmp_path / "runs"


def requires_shared_data():
    return pytest.mark.skipif(not SHARED_DATASETS.is_dir(), reason=f"no datasets at {SHARED_DATASETS}")


WORDS = ["apple", "river", "stone", "cloud", "tiger", "maple", "ocean", "ember", "frost", "lunar", "cedar", "amber"]


def synthetic_corpus(num_items: int = 12, users: int = 48, min_len: int = 5, max_len: int = 10, seed: int = 0):
    """The one shared synthetic corpus of the test suite: every user walks the item cycle 1 -> 2 -> ... -> N -> 1
    from a random start (the next item is a function of the last one), with titles, genres, a year, user
    features (gender, age) and ratings (1-5, so the CTR view has both labels), timestamps in order."""
    import numpy as np

    from zoo.data.corpus import Corpus

    rng = np.random.default_rng(seed)
    sequences = []
    for _ in range(users):
        start = int(rng.integers(num_items))
        sequences.append([(start + t) % num_items + 1 for t in range(int(rng.integers(min_len, max_len + 1)))])
    corpus = Corpus.from_sequences("synthetic", sequences, num_items=num_items)
    corpus.item_text["title"] = [""] + [
        f"the {WORDS[i % len(WORDS)]} book {i // len(WORDS) or ''}".strip() for i in range(num_items)
    ]
    corpus.item_text["genres"] = [""] + [("drama comedy", "action", "drama")[i % 3] for i in range(num_items)]
    corpus.item_text["year"] = [""] + [str(1990 + i % 4) for i in range(num_items)]
    corpus.user_features["gender"] = [("F", "M")[u % 2] for u in range(users)]
    corpus.user_features["age"] = [str(18 + 10 * (u % 4)) for u in range(users)]
    corpus.ratings = rng.integers(1, 6, size=len(corpus.items)).astype(np.float32)
    corpus.timestamps = np.arange(len(corpus.items), dtype=np.float64)
    return corpus.validate()


@pytest.fixture
def corpus():
    return synthetic_corpus()


def build_on(recipe: str, overrides=(), corpus=None, **kw):
    """``zoo.build`` of ``recipe`` with ``overrides`` on ``corpus`` (default: the shared synthetic corpus)."""
    from zoo.build import build
    from zoo.config import compose

    cfg = compose(recipe, list(overrides))
    return build(cfg, corpus=corpus if corpus is not None else synthetic_corpus(**kw))


@pytest.fixture(autouse=True, scope="session")
def _cache_root(tmp_path_factory):
    """Caches (corpora, stage artifacts) of a test session go to a temporary root, never into the data root."""
    if "ZOO_CACHE_DIR" in os.environ:
        yield
        return
    os.environ["ZOO_CACHE_DIR"] = str(tmp_path_factory.mktemp("zoo-cache"))
    yield
    os.environ.pop("ZOO_CACHE_DIR", None)


def recipe_for(model_name: str) -> str | None:
    """The model's MovieLens-100K recipe if it has one, else its first recipe (sorted)."""
    from zoo.config import load_recipe, recipe_names

    mine = [n for n in recipe_names() if (load_recipe(n).get("model") or {}).get("name") == model_name]
    preferred = [n for n in mine if n.endswith("_ml100k")]
    return (preferred or mine or [None])[0]


@pytest.fixture
def one_thread():
    """Training-based tests run single-threaded: the same float reductions, so the same result on any machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


LOG_LINE = r"^\d\d:\d\d:\d\d (DEBUG|INFO) zoo[\w.]*: "


def without_log_lines(text: str) -> str:
    """``text`` (a captured stderr) without the zoo's own INFO/DEBUG log lines (``zoo.logs``): what is left is
    what a command reports as a result or an error."""
    import re

    return "".join(line for line in text.splitlines(keepends=True) if not re.match(LOG_LINE, line))


@pytest.fixture
def kar_prompts(monkeypatch):
    """KAR's text generator replaced by one that answers "NEW" to every prompt; the list of prompts it was asked."""
    from zoo.models.kar import knowledge

    asked: list[str] = []

    class Recording:
        def generate(self, prompts):
            asked.extend(prompts)
            return ["NEW"] * len(prompts)

    monkeypatch.setattr(knowledge, "build_generator", lambda m: Recording())
    return asked
