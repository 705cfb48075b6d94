"""One evaluation protocol for every family: an oracle scoring model and an oracle generative model that rank by
the same scores get identical metrics under full ranking, sampled 1+n candidates and a retriever's lists, each
with and without mask-seen; settings a model cannot honour are refused with one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import build_on, synthetic_corpus

from zoo.build import build
from zoo.config import compose
from zoo.data.candidates import save_candidates
from zoo.errors import ConfigError
from zoo.evaluation import Protocol, drop_items
from zoo.trainer import build_trainer

QUIET = ["trainer.enable_progress_bar=false", "logger.name=none", "data.eval_batch_size=7"]


def test_metrics(name: str, corpus, overrides, tmp_path) -> dict[str, float]:
    cfg = compose("pop_ml100k", [f"model.name=tests.plugins.oracles:{name}", *QUIET, *overrides])
    model, datamodule = build(cfg, corpus=corpus)
    trainer = build_trainer(cfg, model, tmp_path / name)
    trainer.test(model, datamodule=datamodule, verbose=False)
    return {k: v for k, v in model.test_results.items() if "@" in k and not k.startswith("test/invalid")}


test_metrics.__test__ = False  # a helper, not a test


def retriever_file(corpus, path, size: int = 6, seed: int = 1):
    """Random candidate lists per user and split; some hold the target, some do not, some hold seen items."""
    rng = np.random.default_rng(seed)
    users = np.arange(corpus.num_users)
    lists = {s: (users, rng.integers(1, corpus.num_items + 1, size=(len(users), size))) for s in ("val", "test")}
    save_candidates(path, lists)
    return path


@pytest.mark.parametrize("mask_seen", [False, True])
@pytest.mark.parametrize("mode", ["full", "sampled", "retriever"])
def test_oracle_scorer_and_generator_agree_under_every_protocol(mode, mask_seen, tmp_path):
    corpus = synthetic_corpus(num_items=30, users=40, min_len=4, max_len=12)
    overrides = [f"eval.mask_seen={str(mask_seen).lower()}", "eval.num_beams=5"]
    if mode == "sampled":
        overrides.append("data.eval_candidates=8")
    if mode == "retriever":
        overrides.append(f"data.candidates_path={retriever_file(corpus, tmp_path / 'lists.npz')}")
    scores = test_metrics("OracleScorer", corpus, overrides, tmp_path)
    lists = test_metrics("OracleGenerator", corpus, overrides, tmp_path)
    assert scores and scores.keys() == lists.keys()
    for key in scores:
        assert lists[key] == pytest.approx(scores[key], abs=1e-12), key
    # the protocol matters: the test would pass vacuously if every setting gave the same numbers
    assert 0.0 < scores["test/recall@20"]


def test_protocol_changes_the_numbers(tmp_path):
    corpus = synthetic_corpus(num_items=30, users=40, min_len=4, max_len=12)
    full = test_metrics("OracleScorer", corpus, [], tmp_path)
    masked = test_metrics("OracleScorer", corpus, ["eval.mask_seen=true"], tmp_path)
    sampled = test_metrics("OracleScorer", corpus, ["data.eval_candidates=8"], tmp_path)
    assert masked["test/ndcg@10"] >= full["test/ndcg@10"]
    assert masked != full and sampled != full


def test_seen_is_the_whole_history_and_seen_candidates_are_dropped(tmp_path):
    corpus = synthetic_corpus(num_items=30, users=10, min_len=12, max_len=14)
    path = retriever_file(corpus, tmp_path / "lists.npz", size=10)
    _, datamodule = build_on(
        "pop_ml100k", ["data.max_len=3", "eval.mask_seen=true", f"data.candidates_path={path}"], corpus=corpus
    )
    batch = next(iter(datamodule.test_dataloader()))
    for row in range(len(batch["user"])):
        user = int(batch["user"][row])
        before = set(corpus.sequence(user)[:-1].tolist())
        assert set(batch["seen"][row].tolist()) - {0} == before  # not only the 3-item window
        target = int(batch["target"][row])
        kept = set(batch["candidates"][row].tolist()) - {0}
        assert not (kept & before) - {target}


def test_drop_items_moves_the_rest_up_in_order():
    ranked = torch.tensor([[5, 3, 9, 1, 0], [2, 4, 6, 8, 7]])
    drop = torch.tensor([[3, 1, 0], [4, 7, 0]])
    out = drop_items(ranked, drop, keep=torch.tensor([1, 2]))
    assert out.tolist() == [[5, 9, 1, 0, 0], [2, 6, 8, 0, 0]]


def test_a_generator_that_cannot_restrict_to_candidates_is_refused(tmp_path):
    corpus = synthetic_corpus()
    cfg = compose("pop_ml100k", ["model.name=tests.plugins.oracles:NoCandidatesGenerator", "data.eval_candidates=5"])
    with pytest.raises(ConfigError, match="cannot restrict its ranked lists to candidates"):
        build(cfg, corpus=corpus)


def test_the_ranking_protocol_does_not_apply_to_ctr_models():
    with pytest.raises(ConfigError, match="does not apply"):
        build_on("fm_ml100k", ["eval.mask_seen=true"])


def test_protocol_reads_one_place_and_refuses_two_candidate_sources():
    cfg = compose("pop_ml100k", ["data.eval_candidates=10", "eval.mask_seen=true"])
    assert Protocol.from_config(cfg) == Protocol("sampled", 10, None, True)
    with pytest.raises(ConfigError, match="choose one candidate source"):
        Protocol.from_config(compose("pop_ml100k", ["data.eval_candidates=10", "data.candidates_path=x.npz"]))
