"""``benchmarks.beam_renormalize``: each run is evaluated both ways, the difference is recorded, a second call
re-tests nothing, and a directory without a best checkpoint is one line. The evaluation is a fake (a real one is a
full test pass); ``eval.renormalize`` itself is tested in ``test_beam_search.py`` and ``test_methods.py``."""

from __future__ import annotations

import json

import pytest
import yaml

from benchmarks import beam_renormalize, common
from zoo.errors import ConfigError


def finished(run_dir, loss):
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "best.ckpt").write_bytes(b"x")
    (run_dir / "config.yaml").write_text(
        yaml.safe_dump({"recipe": "uem_ml100k", "model": {"name": "uem"}, "loss": {"name": loss}})
    )
    return run_dir


def test_both_scorings_per_run_and_resume(monkeypatch, tmp_path):
    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path / "results")
    (tmp_path / "results").mkdir()
    calls = []

    def evaluate(run_dir, renormalize):
        calls.append((run_dir.name, renormalize))
        return {"test/ndcg@10": 0.02 + (0.005 if renormalize else 0.0) + (0.001 if run_dir.name == "b" else 0.0)}

    monkeypatch.setattr(beam_renormalize, "evaluate", evaluate)
    a, b = finished(tmp_path / "a", "lml"), finished(tmp_path / "b", "msl_ats")
    beam_renormalize._main([f"runs={a},{b}", "name=r"])
    assert calls == [("a", False), ("a", True), ("b", False), ("b", True)]
    runs = json.loads((tmp_path / "results" / "r.json").read_text())["runs"]
    assert runs[str(b)]["loss"] == "msl_ats" and runs[str(b)]["renormalised"]["test/ndcg@10"] == pytest.approx(0.026)
    assert runs[str(a)]["ndcg@10_renormalised_minus_full"] == 0.005
    calls.clear()
    beam_renormalize._main([f"runs={a},{b}", "name=r"])
    assert calls == []
    with pytest.raises(ConfigError, match="no checkpoints/best.ckpt"):
        beam_renormalize._main([f"runs={tmp_path / 'missing'}", "name=r"])
