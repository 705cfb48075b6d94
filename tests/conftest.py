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


@pytest.fixture
def run_root(tmp_path: Path) -> Path:
    return tmp_path / "runs"


def requires_shared_data():
    return pytest.mark.skipif(not SHARED_DATASETS.is_dir(), reason=f"no datasets at {SHARED_DATASETS}")
