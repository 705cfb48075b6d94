"""``benchmarks.uem_alignment``: the cell arm is read from the leaderboard's result, the other arms train once (a
finished run directory is read instead), every arm gets the probe, and a second call does nothing. The training
and the probe are fakes (a real arm is a 12-minute cell and its test)."""

from __future__ import annotations

import json

import pytest

from benchmarks import common, uem_alignment, uem_probe
from zoo.errors import ConfigError


def finished(run_dir, ndcg):
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.json").write_text(json.dumps({"test/ndcg@10": ndcg, "time/total_s": 5.0}))
    return run_dir


@pytest.fixture
def fake(monkeypatch, tmp_path):
    trained: list = []
    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path / "results")
    (tmp_path / "results").mkdir()
    monkeypatch.setattr(uem_alignment, "REPO_ROOT", tmp_path)
    monkeypatch.setattr(uem_probe, "measure", lambda run_dir: {"run": str(run_dir), "distinct_top1": 3})
    monkeypatch.setattr(uem_alignment, "last_checkpoint_test", lambda run_dir: {"test/ndcg@10": 0.05})

    def train_arm(dataset, arm, run_root):
        trained.append((dataset, arm))
        return finished(run_root / dataset / arm / "t1", 0.02 if arm == "align" else 0.03)

    monkeypatch.setattr(uem_alignment, "train_arm", train_arm)
    return trained, tmp_path


def test_arms_train_once_and_a_finished_run_is_read(fake):
    trained, root = fake
    with pytest.raises(ConfigError, match="uem__ml100k__cpu.json is missing"):
        uem_alignment._main(["datasets=ml100k", "name=u"])
    cell = finished(root / "cell_run", 0.01)
    (root / "results" / "uem__ml100k__cpu.json").write_text(json.dumps({"run_dir": str(cell)}))
    finished(root / "runs" / "uem_alignment" / "ml100k" / "align_slot" / "t0", 0.04)  # an earlier call's arm
    uem_alignment._main(["datasets=ml100k", "name=u"])
    assert trained == [("ml100k", a) for a in uem_alignment.ARMS if a not in ("cell", "align_slot")]
    result = json.loads((root / "results" / "u.json").read_text())["datasets"]["ml100k"]
    ndcg = {a: r["test"]["test/ndcg@10"] for a, r in result.items()}
    expected = dict.fromkeys(uem_alignment.ARMS, 0.03) | {"cell": 0.01, "align": 0.02, "align_slot": 0.04}
    assert ndcg == expected
    assert result["per_item_align"]["overrides"] == ["model.tokens=per_item", "model.align_weight=1.0"]
    assert result["align"]["overrides"] == ["model.align_weight=1.0"] and result["cell"]["probe"]["distinct_top1"] == 3
    assert "run" not in result["cell"]["probe"]
    # the arms that train to a step count (a schedule ending there) also test their last checkpoint
    stepped = {a for a, r in result.items() if "last_checkpoint_test" in r}
    assert stepped == {"per_item_align_cosine", "per_item_align_cosine_lr3e-3"}
    assert result["per_item_align_cosine"]["last_checkpoint_test"] == {"test/ndcg@10": 0.05}
    trained.clear()
    uem_alignment._main(["datasets=ml100k", "name=u"])
    assert trained == []
