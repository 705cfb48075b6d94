"""``benchmarks.msl_books_pretrained`` resumes across sessions: finished rows are kept (their hits are in the
result), a row stopped after its training epoch resumes from its run's checkpoint (test only), other settings are
refused in one line. The runs are fakes (a real row is an hour or more of SmolLM2 on this CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import common, llm_claims, msl_books_pretrained
from zoo.errors import ConfigError


class Killed(Exception):
    """Stands for the session ending while a row tests."""


@pytest.fixture
def fake(monkeypatch, tmp_path):
    calls: list[dict] = []
    kill: set[str] = set()
    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path / "results")
    (tmp_path / "results").mkdir()
    monkeypatch.setattr(msl_books_pretrained, "CACHE", tmp_path / "cache")
    monkeypatch.setattr(msl_books_pretrained, "eval_folder", lambda source, rows, seed: tmp_path / "data")
    monkeypatch.setattr(msl_books_pretrained.torch, "set_num_threads", lambda n: None)

    def run(cfg):
        row = Path(cfg.run_dir).parent.name
        calls.append({"row": row, "resume": cfg.resume, "train": cfg.train, "run_dir": cfg.run_dir})
        (Path(cfg.run_dir) / "checkpoints").mkdir(parents=True, exist_ok=True)
        if cfg.train:
            (Path(cfg.run_dir) / "checkpoints" / "last.ckpt").write_text("trained")
        if row in kill:
            raise Killed(row)
        ranks = np.arange(20) % (3 + len(row))  # a different row of hits per arm
        np.savez(Path(cfg.run_dir) / "test_ranks.npz", rank=ranks)
        return {"test/ndcg@10": float(common.ndcg_at(ranks, 10).mean())}

    monkeypatch.setattr(llm_claims, "run", run)
    return calls, kill, tmp_path / "results" / "m.json"


def test_finished_rows_are_kept_and_a_trained_row_only_tests_again(fake):
    calls, kill, path = fake
    args = ["steps=2", "eval_rows=20", "name=m", "bootstrap=10"]
    kill.add("msl")
    with pytest.raises(Killed):
        msl_books_pretrained._main(args)
    assert [c["row"] for c in calls] == ["zero_shot", "lml", "msl"]
    assert calls[0]["train"] is False
    stored = json.loads(path.read_text())
    assert set(stored["rows"]) == {"zero_shot", "lml"} and stored["missing"] == ["msl", "msl_ats"]
    assert list(stored["pending"]) == ["msl"]
    interrupted = calls[-1]["run_dir"]
    calls.clear()
    kill.clear()
    msl_books_pretrained._main(args)
    assert [(c["row"], c["resume"]) for c in calls] == [("msl", interrupted), ("msl_ats", None)]
    stored = json.loads(path.read_text())
    assert stored["complete"] and not stored["pending"]
    assert stored["rows"]["msl"]["resumed_after_training"] and not stored["rows"]["lml"]["resumed_after_training"]
    for name in stored["rows"]:  # the kept rows' hits give the bootstrap what the runs measured
        ranks = np.arange(20) % (3 + len(name))
        assert stored["bootstrap"][name]["ndcg@10"] == pytest.approx(common.ndcg_at(ranks, 10).mean())
    calls.clear()
    msl_books_pretrained._main(args)
    assert calls == []
    with pytest.raises(ConfigError, match="steps=2 \\(now 3\\).*fresh=true"):
        msl_books_pretrained._main(["steps=3", "eval_rows=20", "name=m"])
