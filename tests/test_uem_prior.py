"""``benchmarks.uem_prior``: the weight is chosen on validation users the checkpoint was not selected on, the chosen
weight and the two ends are tested, a second call evaluates nothing again, and bad arguments are one line. The
evaluations are fakes (a real one is a full pass); the prior itself is tested in ``test_uem.py`` and
``test_beam_search.py``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from conftest import build_on

from benchmarks import common, uem_prior
from zoo.errors import ConfigError


def finished(run_dir):
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "best.ckpt").write_bytes(b"x")
    cfg = {"recipe": "uem_ml100k", "model": {"name": "uem"}, "data": {"name": "ml100k"}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    return run_dir


def test_the_weight_is_chosen_on_tuning_users_then_tested_and_resumed(monkeypatch, tmp_path):
    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path / "results")
    (tmp_path / "results").mkdir()
    calls = []

    def validate(run_dir, weights, users):
        calls.append(("validate", tuple(weights), users))
        return {str(w): {0.0: 0.02, 1.0: 0.03, 4.0: 0.03, 8.0: 0.01}[w] for w in weights}, 431

    def test(run_dir, weight):
        calls.append(("test", weight))
        return {"test/ndcg@10": 0.01 + weight / 1e5}

    monkeypatch.setattr(uem_prior, "validate", validate)
    monkeypatch.setattr(uem_prior, "test", test)
    monkeypatch.setattr(uem_prior, "popular_reference", lambda run_dir, users: 0.025)
    run = finished(tmp_path / "run")
    uem_prior._main([f"runs={run}", "weights=4,0,1", "tune_users=500", "name=p"])
    assert calls == [("validate", (0.0, 1.0, 4.0), 500), ("test", 0.0), ("test", 1.0), ("test", uem_prior.MODULE_ALONE)]
    record = json.loads((tmp_path / "results" / "p.json").read_text())["runs"][str(run)]
    assert record["chosen_weight"] == 1.0 and record["tuning_users"] == 431  # a tie goes to the smaller weight
    assert record["tuning_most_popular_ndcg@10"] == 0.025
    assert set(record["test"]) == {"lm_alone (weight 0)", "chosen (weight 1)", "module_alone (weight 10000)"}
    calls.clear()
    uem_prior._main([f"runs={run}", "weights=0,1,4", "name=p"])
    assert calls == []
    uem_prior._main([f"runs={run}", "weights=0,1,4,8", "tests=chosen", "name=p"])  # only the new weight
    assert calls == [("validate", (8.0,), 1024)]  # the chosen weight stays 1: nothing is tested again
    calls.clear()
    uem_prior._main([f"runs={run}", "weights=0", "tests=", "name=p"])  # fewer weights: the choice stays
    record = json.loads((tmp_path / "results" / "p.json").read_text())["runs"][str(run)]
    assert calls == [] and record["chosen_weight"] == 1.0
    other = finished(tmp_path / "other")
    uem_prior._main([f"runs={other}", "weights=0,1", "tests=", "name=p"])  # tuning only
    assert calls == [("validate", (0.0, 1.0), 1024)]
    record = json.loads((tmp_path / "results" / "p.json").read_text())["runs"][str(other)]
    assert record["chosen_weight"] == 1.0 and record["test"] == {}


def test_a_weight_the_run_was_tested_at_is_read_from_its_metrics(monkeypatch, tmp_path):
    """The run's own test (metrics.json, every test user) at its own ``eval.prior_weight`` is the chosen weight's
    test: it is read, not repeated; another weight, or a run tested on part of the users, is tested."""
    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path / "results")
    (tmp_path / "results").mkdir()
    calls = []
    monkeypatch.setattr(uem_prior, "validate", lambda run_dir, weights, users: ({str(w): w for w in weights}, 9))

    def test(run_dir, weight):
        calls.append((run_dir.name, weight))
        return {"test/ndcg@10": 0.5}

    monkeypatch.setattr(uem_prior, "test", test)
    monkeypatch.setattr(uem_prior, "popular_reference", lambda run_dir, users: 0.0)

    def tested(name, weight, limit=None):
        run = finished(tmp_path / name)
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        cfg.update(eval={"prior_weight": weight}, trainer={"limit_test_batches": limit})
        (run / "config.yaml").write_text(yaml.safe_dump(cfg))
        (run / "metrics.json").write_text(json.dumps({"test/ndcg@10": 0.0123456, "best/val/ndcg@10": 0.2}))
        return run

    own, other, partial = tested("own", 4.0), tested("other", 2.0), tested("partial", 4.0, limit=3)
    uem_prior._main([f"runs={own},{other},{partial}", "weights=0,4", "tests=lm_alone,chosen", "name=p"])
    assert calls == [("own", 0.0), ("other", 0.0), ("other", 4.0), ("partial", 0.0), ("partial", 4.0)]
    record = json.loads((tmp_path / "results" / "p.json").read_text())["runs"][str(own)]
    assert record["test"]["chosen (weight 4)"] == {
        "test/ndcg@10": 0.01235,
        "source": "the run's own test (metrics.json)",
    }


def test_bad_arguments_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="no checkpoints/best.ckpt"):
        uem_prior._main([f"runs={tmp_path / 'missing'}"])
    run = finished(tmp_path / "run")
    with pytest.raises(ConfigError, match="weights"):
        uem_prior._main([f"runs={run}", "weights=a,b"])
    with pytest.raises(ConfigError, match="weights"):
        uem_prior._main([f"runs={run}", "weights=-1"])
    with pytest.raises(ConfigError, match="tests"):
        uem_prior._main([f"runs={run}", "tests=bogus"])


def test_tuning_users_are_the_validation_users_after_the_checkpoints_own():
    model, datamodule = build_on("uem_ml100k", ["model.text_fields=[title]", "data.num_workers=0"])
    cfg = model.cfg
    cfg.data.eval_batch_size, cfg.trainer.limit_val_batches = 4, 2.0
    datamodule.cfg.eval_batch_size = 4
    loader, count = uem_prior.tuning_loader(cfg, datamodule, users=6)
    users = [u for batch in loader for u in batch["user"].tolist()]
    val = [u for batch in datamodule.val_dataloader() for u in batch["user"].tolist()]
    assert count == 6 and users == val[8:14]
    targets = [t for batch in loader for t in batch["target"].tolist()]
    assert uem_prior.tuning_targets(cfg, datamodule, 6).tolist() == targets
    # most-popular on them: the number of other items counted at least as often as the target, by brute force
    counts = datamodule.train_item_counts("val")
    ranks = [int((counts[1:] >= counts[t]).sum()) - 1 for t in targets]
    expected = np.mean([1 / np.log2(r + 2) if r < 10 else 0.0 for r in ranks])
    assert uem_prior.popular_ndcg(counts, np.array(targets)) == pytest.approx(expected)
    cfg.trainer.limit_val_batches = 0.5
    with pytest.raises(ConfigError, match="whole number"):
        uem_prior.tuning_loader(cfg, datamodule, users=6)


def test_the_paired_test_bootstraps_the_chosen_weight_against_most_popular_on_the_same_users(monkeypatch, tmp_path):
    """``tests=chosen_paired``: the chosen weight re-tested with every user's rank kept; most-popular ranks the same
    targets by the counts before the test targets (ties against the target); both NDCG@10s and the paired interval
    of their difference are recorded."""
    import zoo.build
    import zoo.run

    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path / "results")
    (tmp_path / "results").mkdir()
    run = finished(tmp_path / "run")
    ranks, targets = np.array([0, 3, -1, 12]), np.array([1, 2, 3, 4])
    counts = np.array([0, 5, 9, 9, 1])  # item 1: rank 2 (two items counted more); 2 and 3 tie: rank 1; 4: rank 3

    def retest(target, overrides=(), timed=False):
        assert "eval.save_ranks=true" in overrides and "eval.prior_weight=4.0" in overrides
        np.savez(run / "test_ranks.npz", user=np.arange(4), target=targets, rank=ranks)
        return {"test/ndcg@10": 0.5, "wall_s": 1.0}

    class Data:
        def train_item_counts(self, split):
            assert split == "test"
            return counts

    monkeypatch.setattr(common, "retest", retest)
    monkeypatch.setattr(zoo.run, "compose_resume", lambda *args: None)
    monkeypatch.setattr(zoo.build, "build", lambda cfg: (None, Data()))
    monkeypatch.setattr(uem_prior, "validate", lambda run_dir, weights, users: ({str(w): w for w in weights}, 9))
    monkeypatch.setattr(uem_prior, "popular_reference", lambda run_dir, users: 0.0)
    uem_prior._main([f"runs={run}", "weights=0,4", "tests=chosen_paired", "name=p"])
    record = json.loads((tmp_path / "results" / "p.json").read_text())["runs"][str(run)]["test"]
    found = record["chosen_paired (weight 4)"]
    uem = np.mean([1.0, 1 / np.log2(5), 0.0, 0.0])
    popular = np.mean([1 / np.log2(4), 1 / np.log2(3), 1 / np.log2(3), 1 / np.log2(5)])
    paired = found["paired_bootstrap"]
    assert found["test_users"] == 4 and paired["uem"]["ndcg@10"] == pytest.approx(uem)
    assert paired["most_popular"]["ndcg@10"] == pytest.approx(popular)
    low, high = paired["uem"]["minus_most_popular_ci95"]
    assert low <= uem - popular <= high
