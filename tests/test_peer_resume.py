"""The RecBole peer benchmark resumes at seed granularity: a run cut short keeps its finished seeds (marked
incomplete), a re-run does only the missing ones and ends with what an uninterrupted run writes. The two sides'
training is replaced by deterministic fakes (RecBole needs its own venv and an hour a seed)."""

from __future__ import annotations

import json

import pytest

from benchmarks import common
from benchmarks.peers import recbole_sasrec as peer
from zoo.errors import ConfigError


def fake_run(side: str, calls: list):
    def run(seed, *rest):
        calls.append((side, seed))
        epochs = [
            {"train_s": 1.0, "val_s": 0.5, "val_ndcg10": 0.01 * (seed + e), "end_s": 1.5 * (e + 1)} for e in range(3)
        ]
        raw = {"seed": seed, "setup_s": 0.1, "fit_s": 4.5, "train_rows": 10}
        return peer.summarise_run(epochs, 0.1 + seed / 100, 0.05 + seed / 1000, raw)

    return run


@pytest.fixture
def fakes(monkeypatch, tmp_path):
    calls: list = []
    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(peer, "run_zoo", fake_run("zoo", calls))
    monkeypatch.setattr(peer, "zoo_test_targets", lambda: {"1": "a", "2": "b"})

    def recbole(seed, max_epochs, patience, threads, targets_path):
        if targets_path is not None:
            targets_path.write_text(json.dumps({"1": "a", "2": "c"}))
        calls.append(("cap", max_epochs))
        return fake_run("recbole", calls)(seed)

    monkeypatch.setattr(peer, "run_recbole", recbole)
    return calls, tmp_path


def strip(result: dict) -> dict:
    return {
        k: v
        for k, v in result.items()
        if k
        not in ("name", "created", "wall_time_s", "git_commit", "hardware", "peak_memory_mb", "load_avg_1m_at_start")
    }


def test_resume_does_only_the_missing_seeds(fakes, monkeypatch):
    calls, results = fakes
    peer._main(["seeds=0,1", "name=whole"])
    whole = json.loads((results / "whole.json").read_text())
    assert whole["complete"] and whole["recbole"]["epochs_capped"] is False
    assert ("cap", peer.NO_CAP_EPOCHS) in calls  # no epoch cap by default: RecBole's early stopping ends it
    assert whole["split_check"] == {"users": 2, "recbole_users": 2, "same_test_target": 1}

    calls.clear()
    real_zoo = peer.run_zoo

    def dies_on_second_zoo_seed(seed, *rest):
        if seed == 1:
            raise KeyboardInterrupt  # the machine went away
        return real_zoo(seed, *rest)

    monkeypatch.setattr(peer, "run_zoo", dies_on_second_zoo_seed)
    with pytest.raises(KeyboardInterrupt):
        peer._main(["seeds=0,1", "name=cut"])
    partial = json.loads((results / "cut.json").read_text())
    assert partial["complete"] is False and partial["missing"] == {"zoo": [1], "recbole": []}
    assert [r["seed"] for r in partial["recbole"]["runs"]] == [0, 1]

    monkeypatch.setattr(peer, "run_zoo", real_zoo)
    calls.clear()
    peer._main(["seeds=0,1", "name=cut"])
    assert calls == [("zoo", 1)]  # nothing finished is run again
    resumed = json.loads((results / "cut.json").read_text())
    assert strip(resumed) == strip(whole)


def test_resume_refuses_other_settings(fakes):
    _, results = fakes
    peer._main(["seeds=0", "name=r"])
    with pytest.raises(ConfigError, match="patience=10 \\(now 3\\)"):
        peer._main(["seeds=0", "name=r", "patience=3"])
    (results / "old.json").write_text(json.dumps({"name": "old"}))  # an earlier, non-resumable result
    with pytest.raises(ConfigError, match="fresh=true"):
        peer._main(["seeds=0", "name=old"])
    peer._main(["seeds=0", "name=old", "fresh=true"])
    assert json.loads((results / "old.json").read_text())["complete"]


def test_a_changed_zoo_recipe_reruns_the_zoo_seeds_only(fakes, monkeypatch):
    calls, results = fakes
    peer._main(["seeds=0,1", "name=tune"])
    assert json.loads((results / "tune.json").read_text())["targets"]  # both sides present: the targets are read
    calls.clear()
    peer._main(["seeds=0,1", "name=tune"])
    assert calls == []  # nothing changed: nothing runs
    real = peer.zoo_settings

    def tuned(args):  # the recipe now sets another learning rate
        settings = real(args)
        return {**settings, "recipe": {**settings["recipe"], "optim.lr": 0.5}}

    monkeypatch.setattr(peer, "zoo_settings", tuned)
    peer._main(["seeds=0,1", "name=tune"])
    assert calls == [("zoo", 0), ("zoo", 1)]  # RecBole's (hours a seed) are kept
    calls.clear()
    peer._main(["seeds=0,1", "name=tune", "zoo_batch_size=12"])
    assert calls == [("zoo", 0), ("zoo", 1)]
    assert json.loads((results / "tune.json").read_text())["resume_zoo"]["recipe"]["optim.lr"] == 0.5


def test_two_calls_at_once_on_other_recbole_seeds_keep_each_others(fakes, monkeypatch):
    calls, results = fakes
    real = peer.run_recbole
    nested = []

    def recbole(seed, *rest):
        if seed == 0 and not nested:  # while seed 0 trains, a second call does RecBole's seed 1
            nested.append(True)
            peer._main(["seeds=0,1", "recbole_seeds=1", "sides=recbole", "name=lanes"])
        return real(seed, *rest)

    monkeypatch.setattr(peer, "run_recbole", recbole)
    peer._main(["seeds=0", "recbole_seeds=0", "name=lanes"])
    result = json.loads((results / "lanes.json").read_text())
    # the first call wrote last, after the second had written seed 1: both seeds are kept
    assert [r["seed"] for r in result["recbole"]["runs"]] == [0, 1] and result["complete"]
    calls.clear()
    peer._main(["seeds=0", "recbole_seeds=0,1", "name=lanes"])
    assert calls == []  # nothing is run again


def test_a_recbole_only_call_keeps_the_zoo_seeds_of_a_newer_recipe(fakes, monkeypatch):
    calls, results = fakes
    real_recbole, real_settings = peer.run_recbole, peer.zoo_settings

    def tuned(args):  # the recipe as changed while the RecBole-only call trains
        settings = real_settings(args)
        return {**settings, "recipe": {**settings["recipe"], "optim.lr": 0.5}}

    def recbole(seed, *rest):
        if not calls:  # while RecBole trains, the recipe changes and a second call runs the zoo side
            monkeypatch.setattr(peer, "zoo_settings", tuned)
            peer._main(["seeds=0,1", "sides=zoo", "name=both"])
        return real_recbole(seed, *rest)

    monkeypatch.setattr(peer, "run_recbole", recbole)
    peer._main(["seeds=0,1", "recbole_seeds=0", "sides=recbole", "name=both"])  # composed the old recipe
    result = json.loads((results / "both.json").read_text())
    assert [r["seed"] for r in result["zoo"]["runs"]] == [0, 1]  # written last, it kept the other call's seeds
    assert result["resume_zoo"]["recipe"]["optim.lr"] == 0.5 and not result["missing"]["zoo"]
    calls.clear()
    peer._main(["seeds=0,1", "recbole_seeds=0", "name=both"])  # the recipe as it is now: nothing to run
    assert calls == []


def test_sasrec_factors_resume_per_arm_and_seed(monkeypatch, tmp_path):
    from benchmarks import sasrec_factors

    calls: list = []
    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)

    def run(seed, max_epochs, patience, minutes, batch_size, overrides):
        calls.append((seed, batch_size, overrides))
        return fake_run("zoo", [])(seed + batch_size / 1000)

    monkeypatch.setattr(sasrec_factors, "run_zoo", run)
    sasrec_factors._main(["arms=base,prefix_rows", "seeds=0", "name=f"])
    pin = ("optim.lr=0.001",)  # the arms stay against the recipe's old base, whatever the recipe says today
    assert calls == [(0, 6, pin), (0, 256, (*pin, "model.train_rows=prefix", "data.train_len=0"))]
    calls.clear()
    sasrec_factors._main(["arms=base,prefix_rows,dropout_0.2", "seeds=0,1", "name=f"])
    assert [(c[0], c[1]) for c in calls] == [(1, 6), (1, 256), (0, 6), (1, 6)]  # only what was missing
    result = json.loads((tmp_path / "f.json").read_text())
    assert result["complete"] and set(result["arms"]) == {"base", "prefix_rows", "dropout_0.2"}
    assert "test_ndcg@10_vs_base" in result["arms"]["prefix_rows"]
    with pytest.raises(ConfigError, match="max_minutes"):
        sasrec_factors._main(["arms=base", "seeds=0", "name=f", "max_minutes=3"])


def test_kar_grid_resumes_per_backbone_variant_and_seed(monkeypatch, tmp_path):
    from benchmarks import kar_ml100k

    calls: list = []
    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)

    def run_cell(recipe, overrides):
        calls.append((recipe, tuple(o for o in overrides if o.startswith(("seed=", "model.kar")))))
        seed = int(next(o for o in overrides if o.startswith("seed="))[5:])
        towers = next((o.split("=")[1] for o in overrides if o.startswith("model.kar_towers=")), "none")
        auc = 0.75 + {"none": 0.0, "reasoning": 0.004, "fact": 0.002, "both": 0.01}[towers] + seed / 1000
        return {"test/auc": auc, "test/logloss": 0.5, "test/gauc": auc - 0.05, "best/val/auc": auc}

    monkeypatch.setattr(kar_ml100k, "run_cell", run_cell)
    args = ["backbones=din", "seeds=0,1", "texts=none"]
    kar_ml100k.main([*args, "name=whole", "variants=none"])  # the backbone alone first: it needs no knowledge
    assert [c[0] for c in calls] == ["din_ml100k", "din_ml100k"]
    kar_ml100k.main([*args, "name=whole"])
    whole = json.loads((tmp_path / "whole.json").read_text())
    assert len(whole["runs"]) == 8 and len(calls) == 8
    assert not whole["complete"] and len(whole["missing"]) == 3 * 8  # the other three backbones
    gain = whole["cells"]["din"]["both_auc_gain"]
    assert gain["abs"] == pytest.approx(0.01) and gain["beyond_spread"]  # spread: std of 0.750 / 0.751
    assert whole["cells"]["din"]["both_exceeds_sum_of_parts"]  # 0.01 > 0.004 + 0.002

    calls.clear()
    real = run_cell

    def dies_on_the_fifth(recipe, overrides):
        if len(calls) == 4:
            raise KeyboardInterrupt  # the machine went away
        return real(recipe, overrides)

    monkeypatch.setattr(kar_ml100k, "run_cell", dies_on_the_fifth)
    with pytest.raises(KeyboardInterrupt):
        kar_ml100k.main([*args, "name=cut"])
    partial = json.loads((tmp_path / "cut.json").read_text())
    assert partial["complete"] is False and len(partial["runs"]) == 4 and len(partial["missing"]) == 4 + 3 * 8
    monkeypatch.setattr(kar_ml100k, "run_cell", run_cell)
    calls.clear()
    kar_ml100k.main([*args, "name=cut"])
    assert len(calls) == 4  # only the missing runs
    resumed = json.loads((tmp_path / "cut.json").read_text())
    drop = ("seconds", "load_avg_1m_at_start")
    assert [{k: v for k, v in r.items() if k not in drop} for r in resumed["runs"]] == [
        {k: v for k, v in r.items() if k not in drop} for r in whole["runs"]
    ]
    assert resumed["cells"] == whole["cells"]
    with pytest.raises(ConfigError, match="fresh=true"):
        kar_ml100k.main([*args, "name=cut", "max_time=00:00:01:00"])
    with pytest.raises(ConfigError, match="no such folder"):
        kar_ml100k.main(["texts=/nonexistent"])


def test_kar_calls_on_other_backbones_at_once_keep_each_others_runs(monkeypatch, tmp_path):
    from benchmarks import kar_ml100k

    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)
    args = ["seeds=0", "texts=none", "variants=none", "name=lanes"]
    fake = {"test/auc": 0.75, "test/logloss": 0.5, "test/gauc": 0.7}
    nested = []

    def run_cell(recipe, overrides):
        if recipe.startswith("deepfm") and not nested:  # while deepfm trains, another call does din
            nested.append(True)
            kar_ml100k.main(["backbones=din", *args])
        return fake

    monkeypatch.setattr(kar_ml100k, "run_cell", run_cell)
    kar_ml100k.main(["backbones=deepfm", *args])
    result = json.loads((tmp_path / "lanes.json").read_text())
    assert [(r["backbone"], r["variant"]) for r in result["runs"]] == [("din", "none"), ("deepfm", "none")]
    assert set(result["cells"]) == {"din", "deepfm"}
