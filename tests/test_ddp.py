"""Two CPU processes (gloo DDP) give the same metrics as one: evaluation shards without duplicates and the metric
states are summed across ranks; training with half the batch per rank takes the same steps."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO


def run_zoo(args: list[str], run_dir: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "zoo.run", *args, f"run_dir={run_dir}", "trainer.enable_progress_bar=false"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads((run_dir / "metrics.json").read_text())


def test_ddp_cpu_evaluation_equals_single_process(tmp_path):
    one = run_zoo(["recipe=pop_ml100k"], tmp_path / "one")
    two = run_zoo(["recipe=pop_ml100k", "trainer.preset=ddp_cpu"], tmp_path / "two")
    for key, value in one.items():
        if key.startswith("test/"):
            assert two[key] == pytest.approx(value, abs=1e-12), key


def test_ddp_cpu_training_equals_single_process(tmp_path):
    recipe = REPO / "tests" / "plugins" / "last_item_ml100k.yaml"
    common = [f"recipe={recipe}", "trainer.max_epochs=1", "trainer.limit_train_batches=3"]
    one = run_zoo([*common, "data.batch_size=64"], tmp_path / "one")
    two = run_zoo([*common, "data.batch_size=32", "trainer.preset=ddp_cpu"], tmp_path / "two")
    assert one["test/ndcg@10"] > 0
    for key, value in one.items():
        if key.startswith("test/"):
            assert two[key] == pytest.approx(value, abs=2e-3), key
