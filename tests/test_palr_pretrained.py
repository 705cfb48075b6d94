"""``benchmarks.palr_pretrained``: SASRec's own top-10 row is read from its exported lists for the slice's users,
the LLM rows are paired with it (the same users, in order, or one clear error), and the benchmark resumes at row
granularity. The runs are fakes (a real row is an hour of SmolLM2 on this CPU); the corpus is the cycle corpus."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_llm_rec import cycle_corpus
from test_palr import NUM_ITEMS, write_candidates

from benchmarks import common, llm_claims, palr_pretrained
from zoo.data.candidates import load_candidates
from zoo.errors import ConfigError, DataError

USERS = 20


class Killed(Exception):
    """Stands for the session ending while a row tests."""


@pytest.fixture
def fake(monkeypatch, tmp_path):
    corpus = cycle_corpus(NUM_ITEMS)
    lists = write_candidates(tmp_path / "candidates.npz", corpus, size=NUM_ITEMS - 1)
    calls: list[dict] = []
    state = {"kill": set(), "users": None}
    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path / "results")
    (tmp_path / "results").mkdir()
    monkeypatch.setattr(palr_pretrained, "CACHE", tmp_path / "cache")
    monkeypatch.setattr(palr_pretrained, "load_corpus", lambda cfg: corpus)
    monkeypatch.setattr(palr_pretrained, "retriever_stage", lambda cfg, corpus, minutes: (lists, {"reused": True}))
    monkeypatch.setattr(palr_pretrained.torch, "set_num_threads", lambda n: None)

    def run(cfg):
        row = Path(cfg.run_dir).parent.name
        calls.append({"row": row, "resume": cfg.resume, "train": cfg.train, "cfg": cfg})
        (Path(cfg.run_dir) / "checkpoints").mkdir(parents=True, exist_ok=True)
        if cfg.train:
            (Path(cfg.run_dir) / "checkpoints" / "last.ckpt").write_text("trained")
        if row in state["kill"]:
            raise Killed(row)
        ranks = np.arange(USERS) % (2 + len(row))
        np.savez(Path(cfg.run_dir) / "test_ranks.npz", user=state["users"], target=ranks, rank=ranks)
        return {"test/ndcg@10": float(common.ndcg_at(ranks, 10).mean())}

    monkeypatch.setattr(llm_claims, "run", run)
    return calls, state, lists, tmp_path / "results" / "p.json"


def test_sasrec_row_llm_rows_paired_and_resumed(fake):
    calls, state, lists, path = fake
    from zoo.config import compose
    from zoo.data import SequentialDataModule

    examples = SequentialDataModule(compose("palr_ml100k").data, corpus=cycle_corpus(NUM_ITEMS)).examples("test")
    state["users"] = examples.user[:USERS]
    args = ["steps=2", f"users={USERS}", "candidates=5", "name=p", "bootstrap=10"]
    state["kill"].add("palr")
    with pytest.raises(Killed):
        palr_pretrained._main(args)
    assert [(c["row"], c["train"]) for c in calls] == [("zero_shot", False), ("palr", True)]
    cfg = calls[-1]["cfg"]
    assert cfg.model.backbone == "smollm2-135m" and cfg.model.num_candidates == 5 and cfg.model.lora_r == 8
    assert cfg.trainer.limit_train_batches == 2 and cfg.trainer.limit_test_batches == 2  # 20 users, batches of 16
    stored = json.loads(path.read_text())
    assert set(stored["rows"]) == {"sasrec", "zero_shot"} and list(stored["pending"]) == ["palr"]
    # SASRec's row: the rank of each slice user's target in the first 10 of its exported list
    ids, items = load_candidates(lists)["test"]
    row_of = {int(u): i for i, u in enumerate(ids.tolist())}
    expected = []
    for user, target in zip(examples.user[:USERS].tolist(), examples.target[:USERS].tolist()):
        top = items[row_of[user], :10].tolist()
        expected.append(top.index(target) if target in top else 10)
    ndcg = common.ndcg_at(np.array(expected), 10).mean()
    # the reference: the shown 5 hold the target for `among` of the users; a random order of 5 keeps all in the top 10
    among = np.mean(
        [t in items[row_of[u], :5].tolist() for u, t in zip(examples.user[:USERS], examples.target[:USERS])]
    )
    gain = sum(1 / np.log2(r + 2) for r in range(5)) / 5
    assert stored["reference"] == pytest.approx(
        {"ceiling_hr@5": among, "random_order_expected_hr@10": among, "random_order_expected_ndcg@10": among * gain},
        abs=1e-5,
    )
    assert stored["rows"]["sasrec"]["metrics"]["test/ndcg@10"] == pytest.approx(ndcg, abs=1e-5)
    assert stored["bootstrap"]["zero_shot"]["minus_sasrec"] == pytest.approx(
        common.ndcg_at(np.arange(USERS) % 11, 10).mean() - ndcg
    )
    interrupted = calls[-1]["cfg"].run_dir
    calls.clear()
    state["kill"].clear()
    palr_pretrained._main(args)
    assert [(c["row"], c["resume"]) for c in calls] == [("palr", interrupted)]
    stored = json.loads(path.read_text())
    assert stored["complete"] and stored["rows"]["palr"]["resumed_after_training"]
    assert stored["tuning_effect"]["minus_zero_shot"] == pytest.approx(
        (common.ndcg_at(np.arange(USERS) % 6, 10) - common.ndcg_at(np.arange(USERS) % 11, 10)).mean()
    )


def test_rows_of_other_users_are_refused(fake):
    calls, state, _, _ = fake
    state["users"] = np.arange(USERS)[::-1]
    with pytest.raises(DataError, match="differ from the slice"):
        palr_pretrained._main(["steps=2", f"users={USERS}", "candidates=5", "name=p", "bootstrap=10"])


def test_more_shown_candidates_than_exported_is_one_error(fake):
    with pytest.raises(ConfigError, match="candidates must be <= 50"):
        palr_pretrained._main(["candidates=60", "name=p"])


def test_rows_over_other_sasrec_lists_are_refused(fake):
    """A rebuilt retriever stage exports other lists: the stored rows re-ranked the old ones, so the run stops."""
    calls, state, lists, _ = fake
    from zoo.config import compose
    from zoo.data import SequentialDataModule

    examples = SequentialDataModule(compose("palr_ml100k").data, corpus=cycle_corpus(NUM_ITEMS)).examples("test")
    state["users"] = examples.user[:USERS]
    args = ["steps=2", f"users={USERS}", "candidates=5", "name=p", "bootstrap=10", "zero_shot=false"]
    palr_pretrained._main(args)
    assert [c["row"] for c in calls] == ["palr"]
    write_candidates(lists, cycle_corpus(NUM_ITEMS), size=NUM_ITEMS - 1, seed=1)
    with pytest.raises(ConfigError, match="lists_sha256=.*fresh=true"):
        palr_pretrained._main(args)
