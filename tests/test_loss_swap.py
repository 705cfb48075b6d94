"""``benchmarks.loss_swap`` (a loss as a drop-in for one recipe at one budget): resumable per (loss, seed), paired
bootstrap against the first loss, compact per-row ranks, bad arguments in one line. The training runs are
deterministic fakes (a real run is a leaderboard cell: minutes to hours)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import common, loss_swap
from zoo.errors import ConfigError


def fake_ranks(loss: str, seed: int, users: int = 200) -> np.ndarray:
    rng = np.random.default_rng(seed * 7 + len(loss))
    ranks = rng.integers(0, 60, size=users)
    ranks[rng.random(users) < 0.5] = 1 << 30  # misses, as ranks_from_lists marks them
    if loss != "lml":
        ranks[: users // 4] = 0  # the other losses hit the first quarter at rank 0
    return ranks


@pytest.fixture
def fake_runs(monkeypatch, tmp_path):
    calls: list = []
    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)

    def run_one(recipe, budget, loss, seed, steps, run_root):
        calls.append((loss, seed))
        ranks = fake_ranks(loss, seed)
        ndcg = float(common.ndcg_at(ranks, 10).mean())
        return {
            "seed": seed,
            "metrics": {"test/ndcg@10": ndcg},
            "wall_s": 1.0,
            "run_dir": "x",
            "hits": loss_swap.top_ranks(ranks),
        }

    monkeypatch.setattr(loss_swap, "run_one", run_one)
    return calls, tmp_path


def test_top_ranks_round_trip_keeps_every_metric_at_k_up_to_20():
    ranks = np.array([0, 5, 19, 20, 1 << 30, 3, 250])
    back = loss_swap.full_ranks(loss_swap.top_ranks(ranks))
    for k in (5, 10, 20):
        assert np.array_equal(common.ndcg_at(back, k), common.ndcg_at(ranks, k))
        assert np.array_equal(back < k, ranks < k)


def test_resume_runs_only_the_missing_loss_seed_pairs_and_bootstraps_paired(fake_runs):
    calls, results = fake_runs
    loss_swap._main(["recipe=p5_ml100k", "losses=lml,msl", "seeds=0", "name=s"])
    assert calls == [("lml", 0), ("msl", 0)]
    calls.clear()
    loss_swap._main(["recipe=p5_ml100k", "losses=lml,msl,msl_ats", "seeds=0,1", "name=s"])
    assert calls == [("lml", 1), ("msl", 1), ("msl_ats", 0), ("msl_ats", 1)]
    result = json.loads((results / "s.json").read_text())
    assert result["complete"] and result["reference"] == "lml"
    boot = result["bootstrap"]
    pooled = {
        loss: np.concatenate([common.ndcg_at(fake_ranks(loss, s), 10) for s in (0, 1)]) for loss in ("lml", "msl")
    }
    assert boot["lml"]["ndcg@10"] == pytest.approx(pooled["lml"].mean())
    assert boot["msl"]["minus_lml"] == pytest.approx((pooled["msl"] - pooled["lml"]).mean())
    low, high = boot["msl"]["minus_lml_ci95"]
    assert 0 < low < boot["msl"]["minus_lml"] < high  # a quarter of the rows gain a rank-0 hit: clearly positive
    calls.clear()
    loss_swap._main(["recipe=p5_ml100k", "losses=lml,msl,msl_ats", "seeds=0,1", "name=s"])
    assert calls == []


def test_two_calls_at_once_on_other_losses_keep_each_others_runs(fake_runs, monkeypatch):
    calls, results = fake_runs
    inner = loss_swap.run_one

    def nested(recipe, budget, loss, seed, steps, run_root):  # the other call finishes while this one trains
        if loss == "msl":
            monkeypatch.setattr(loss_swap, "run_one", inner)
            loss_swap._main(["recipe=p5_ml100k", "losses=msl_ats", "seeds=0", "name=p", "steps=7"])
        return inner(recipe, budget, loss, seed, steps, run_root)

    monkeypatch.setattr(loss_swap, "run_one", nested)
    loss_swap._main(["recipe=p5_ml100k", "losses=lml,msl", "seeds=0", "name=p", "steps=7"])
    result = json.loads((results / "p.json").read_text())
    assert set(result["losses"]) == {"lml", "msl", "msl_ats"}
    assert set(result["bootstrap"]) == {"lml", "msl", "msl_ats"} and result["settings"]["steps"] == 7


def test_other_settings_and_bad_arguments_are_one_line(fake_runs):
    calls, results = fake_runs
    loss_swap._main(["recipe=p5_ml100k", "losses=lml,msl", "seeds=0", "name=s"])
    with pytest.raises(ConfigError, match="fresh=true"):
        loss_swap._main(["recipe=p5_beauty", "losses=lml,msl", "seeds=0", "name=s"])
    for argv, message in (
        (["recipe=nope"], "recipe=nope"),
        (["recipe=p5_ml100k", "budget=huge"], "budget=huge"),
        (["recipe=p5_ml100k", "losses="], "at least one"),
        (["recipe=p5_ml100k", "reference=lml,msl"], "one loss"),
        (["recipe=p5_ml100k", "steps=-5"], "steps"),
        (["recipe=p5_ml100k", "losses=lml,bogus"], "unknown 'bogus'"),
        (["recipe=p5_ml100k", "seeds=-1"], "seeds"),
    ):
        with pytest.raises(ConfigError, match=message):
            loss_swap._main(argv)
    assert loss_swap.main(["recipe=nope"]) == 2
