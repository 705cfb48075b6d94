"""Ranking metrics: hand-computed cases, an independent slow reference, sampled mode, chunked exactness."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from zoo.errors import ConfigError, DataError
from zoo.metrics import (
    MISS,
    RankingMetrics,
    chunked_target_ranks,
    metrics_from_ranks,
    ranked_list_metrics,
    ranking_metrics,
    ranks_from_lists,
    sampled_ranking_metrics,
    sampled_ranks,
    target_ranks,
)

KS = (1, 2, 3, 5, 10)


def reference_metrics(scores: np.ndarray, targets: np.ndarray, ks, seen: np.ndarray | None = None) -> dict:
    """Deliberately independent and slow: sort each user's items best first with the target placed after every
    item tied with it (NaN = -inf), drop padding and masked items, then apply RecBole's formulas to the 0/1 hit
    vector of the top max(K) (recbole.evaluator.metrics: Recall, Hit, NDCG, MRR, Precision, one positive)."""
    max_k = max(ks)
    users, width = scores.shape
    pos_index = np.zeros((users, max_k), dtype=bool)
    for u in range(users):
        target = int(targets[u])
        row = np.where(np.isnan(scores[u]), -np.inf, scores[u])
        masked = set() if seen is None else {int(i) for i in seen[u]} - {target}
        items = [i for i in range(1, width) if i not in masked]
        ordered = sorted(items, key=lambda i: (-row[i], i == target))[:max_k]
        pos_index[u, : len(ordered)] = [i == target for i in ordered]
    pos_len = np.ones(users)
    hits = np.cumsum(pos_index, axis=1)
    recall = hits / pos_len[:, None]
    hit = (hits > 0).astype(float)
    mrr = np.zeros((users, max_k))
    for u in range(users):
        if pos_index[u].any():
            first = int(pos_index[u].argmax())
            mrr[u, first:] = 1.0 / (first + 1)
    positions = np.arange(1, max_k + 1)
    dcg = np.cumsum(np.where(pos_index, 1.0 / np.log2(positions + 1), 0.0), axis=1)
    idcg = np.cumsum(1.0 / np.log2(positions + 1))
    ndcg = dcg / np.array([[idcg[min(int(p), k) - 1] for k in positions] for p in pos_len])
    precision = hits / positions
    table = {"recall": recall, "hr": hit, "ndcg": ndcg, "mrr": mrr, "precision": precision}
    return {f"{name}@{k}": float(values[:, k - 1].mean()) for name, values in table.items() for k in ks}


def assert_close(ours: dict, ref: dict, tol: float = 1e-9) -> None:
    assert ours.keys() == ref.keys()
    for key in ref:
        assert abs(ours[key] - ref[key]) <= tol, (key, ours[key], ref[key])


def random_case(seed: int, users: int = 40, items: int = 30, levels: int | None = None):
    """Scores with many ties (``levels`` distinct values) or none, targets, and histories (some with the target)."""
    gen = torch.Generator().manual_seed(seed)
    if levels:
        scores = torch.randint(0, levels, (users, items + 1), generator=gen).double()
    else:
        scores = torch.rand(users, items + 1, generator=gen, dtype=torch.float64)
    targets = torch.randint(1, items + 1, (users,), generator=gen)
    seen = torch.randint(0, items + 1, (users, 6), generator=gen)
    seen[::3, 0] = targets[::3]
    return scores, targets, seen


# -- hand-computed cases ------------------------------------------------------------------------------------------


def test_hand_computed_tie_counts_against_target():
    scores = torch.tensor([[9.0, 0.5, 0.9, 0.5, 0.1]])  # item 3 ties with target 1, item 2 beats it; pad ignored
    assert target_ranks(scores, torch.tensor([1])).tolist() == [2]
    m = ranking_metrics(scores, torch.tensor([1]), ks=(2, 3))
    assert m["recall@2"] == 0.0 and m["hr@2"] == 0.0 and m["ndcg@2"] == 0.0
    assert m["recall@3"] == 1.0 and m["hr@3"] == 1.0
    assert m["ndcg@3"] == pytest.approx(1 / math.log2(4))
    assert m["mrr@3"] == pytest.approx(1 / 3)
    assert m["precision@3"] == pytest.approx(1 / 3)


def test_padding_never_ranks_and_mean_over_users():
    scores = torch.tensor([[100.0, 0.1, 0.2], [100.0, 0.3, 0.2]])
    targets = torch.tensor([2, 2])
    assert target_ranks(scores, targets).tolist() == [0, 1]
    m = ranking_metrics(scores, targets, ks=(1, 2))
    assert m["recall@1"] == 0.5
    assert m["ndcg@2"] == pytest.approx((1.0 + 1 / math.log2(3)) / 2)
    assert m["mrr@2"] == pytest.approx(0.75)
    assert m["precision@2"] == pytest.approx(0.5)


def test_masking_seen_items_is_optional_and_never_masks_target():
    scores = torch.tensor([[0.0, 0.9, 0.8, 0.7]])
    assert target_ranks(scores, torch.tensor([3])).tolist() == [2]
    assert target_ranks(scores, torch.tensor([3]), seen=torch.tensor([[1, 0]])).tolist() == [1]
    assert target_ranks(scores, torch.tensor([3]), seen=torch.tensor([[3, 1, 1]])).tolist() == [1]


def test_nan_and_infinite_scores():
    nan, inf = float("nan"), float("inf")
    # NaN target ties with every other item at -inf: worst rank.
    assert target_ranks(torch.tensor([[0.0, nan, 0.2, -inf, nan]]), torch.tensor([1])).tolist() == [3]
    # NaN others are -inf: never ahead of a finite target; +inf items are ahead.
    assert target_ranks(torch.tensor([[0.0, 0.1, nan, inf, 0.0]]), torch.tensor([1])).tolist() == [1]
    # a -inf target with masking: every unmasked other item ties with it.
    ranks = target_ranks(torch.tensor([[0.0, -inf, 1.0, 2.0, 3.0]]), torch.tensor([1]), seen=torch.tensor([[2, 2]]))
    assert ranks.tolist() == [2]


def test_all_equal_scores_rank_last():
    scores = torch.ones(3, 8)
    assert target_ranks(scores, torch.tensor([1, 4, 7])).tolist() == [6, 6, 6]


def test_bad_inputs_raise_data_error():
    scores = torch.rand(2, 5)
    with pytest.raises(DataError, match="targets"):
        target_ranks(scores, torch.tensor([0, 1]))
    with pytest.raises(DataError, match="targets"):
        target_ranks(scores, torch.tensor([1, 5]))
    with pytest.raises(DataError, match="integer"):
        target_ranks(scores, torch.tensor([1.0, 2.0]))
    with pytest.raises(DataError, match="rows"):
        target_ranks(scores, torch.tensor([1]))
    with pytest.raises(DataError, match="seen"):
        target_ranks(scores, torch.tensor([1, 2]), seen=torch.tensor([[7], [0]]))
    with pytest.raises(DataError):
        target_ranks(torch.rand(5), torch.tensor([1]))
    with pytest.raises(ConfigError):
        metrics_from_ranks(torch.tensor([0]), ks=(0, 5))
    with pytest.raises(ConfigError):
        RankingMetrics(ks=[])
    with pytest.raises(DataError):
        RankingMetrics(ks=(5,)).update(torch.tensor([0.5]))


# -- against the independent reference ------------------------------------------------------------------------------


@pytest.mark.parametrize("levels", [None, 3, 12])
@pytest.mark.parametrize("mask", [False, True])
@pytest.mark.parametrize("block_columns", [None, 1, 7])
def test_equals_reference_with_and_without_ties(levels, mask, block_columns, monkeypatch):
    scores, targets, seen = random_case(seed=levels or 0, levels=levels)
    if block_columns:  # count in several column blocks (the last one partial)
        monkeypatch.setattr("zoo.metrics.ranking.COUNT_BLOCK_ELEMENTS", block_columns * len(scores))
    scores[5, targets[5]] = float("nan")
    scores[6, 1:4] = float("nan")
    scores[7, targets[7]] = float("-inf")
    scores[8, :] = float("inf")
    seen_arg = seen if mask else None
    ours = ranking_metrics(scores, targets, KS, seen=seen_arg)
    ref = reference_metrics(scores.numpy(), targets.numpy(), KS, None if seen_arg is None else seen.numpy())
    assert_close(ours, ref)


def test_low_precision_scores_keep_ties_and_float64_keeps_distinct_values():
    scores, targets, _ = random_case(seed=1, levels=4)
    assert torch.equal(target_ranks(scores.bfloat16(), targets), target_ranks(scores, targets))
    close = torch.tensor([[0.0, 1.0 + 1e-12, 1.0]], dtype=torch.float64)  # equal in float32, not in float64
    assert target_ranks(close, torch.tensor([1])).tolist() == [0]


def test_ranked_lists():
    ranked = torch.tensor([[3, 5, 5, 7], [0, 2, 0, 0], [4, 4, 4, 4]])
    ranks = ranks_from_lists(ranked, torch.tensor([7, 2, 9]))
    assert ranks.tolist() == [3, 1, MISS]
    assert ranks_from_lists(torch.tensor([[0, 0]]), torch.tensor([0])).tolist() == [MISS]
    m = ranked_list_metrics(ranked, torch.tensor([7, 2, 9]), ks=(1, 2, 4))
    assert m["recall@1"] == 0.0 and m["recall@2"] == pytest.approx(1 / 3) and m["recall@4"] == pytest.approx(2 / 3)
    assert m["ndcg@4"] == pytest.approx((1 / math.log2(5) + 1 / math.log2(3)) / 3)
    assert m["mrr@4"] == pytest.approx((1 / 4 + 1 / 2) / 3)


def test_ranked_lists_match_scores_of_the_same_ranking():
    """A strict ranking given as a list or as scores yields the same metrics."""
    scores, targets, _ = random_case(seed=3)
    scores[:, 0] = float("-inf")
    ranked = scores.argsort(dim=1, descending=True)[:, :10]
    assert metrics_from_ranks(ranks_from_lists(ranked, targets), KS) == pytest.approx(
        ranking_metrics(scores, targets, KS)
    )


# -- sampled-candidate mode -----------------------------------------------------------------------------------------


def test_sampled_ranks_hand_computed():
    scores = torch.tensor([[0.5, 0.9, 0.5, 0.1], [0.5, 0.1, 0.2, 0.3], [float("nan"), 0.1, 0.2, 0.3]])
    assert sampled_ranks(scores).tolist() == [2, 0, 3]
    candidates = torch.tensor([[7, 3, 7, 0], [4, 1, 2, 3], [5, 0, 0, 6]])  # a duplicate of the target, padding
    assert sampled_ranks(scores, candidates).tolist() == [1, 0, 1]
    m = sampled_ranking_metrics(scores[:2], ks=(1, 3))
    assert m["hr@1"] == 0.5 and m["ndcg@3"] == pytest.approx((1 / math.log2(4) + 1) / 2)
    with pytest.raises(DataError):
        sampled_ranks(scores, candidates[:, :2])


def test_sampled_equals_full_ranking_over_the_same_items():
    """Sampled mode over candidates [target, negatives...] equals full ranking of a matrix holding only them."""
    gen = torch.Generator().manual_seed(4)
    users, items, num_neg = 25, 40, 9
    scores = torch.randint(0, 5, (users, items + 1), generator=gen).double()
    targets = torch.randint(1, items + 1, (users,), generator=gen)
    negatives = torch.stack([torch.randperm(items, generator=gen)[:num_neg] + 1 for _ in range(users)])
    negatives = torch.where(negatives == targets.view(-1, 1), torch.zeros_like(negatives), negatives)
    candidates = torch.cat([targets.view(-1, 1), negatives], dim=1)
    sampled = sampled_ranks(scores.gather(1, candidates), candidates)
    restricted = torch.full_like(scores, float("nan"))  # NaN = -inf: items outside the sample rank last
    restricted.scatter_(1, candidates, scores.gather(1, candidates))
    assert torch.equal(sampled, target_ranks(restricted, targets))


# -- the torchmetrics accumulator -----------------------------------------------------------------------------------


def test_ranking_metric_accumulates_batches_exactly():
    scores, targets, _ = random_case(seed=5, users=37, levels=6)
    metric = RankingMetrics(ks=KS)
    assert metric is not None and isinstance(metric, RankingMetrics)
    for start in (0, 5, 6, 30):
        stop = {0: 5, 5: 6, 6: 30, 30: 37}[start]
        metric.update(target_ranks(scores[start:stop], targets[start:stop]))
    together = ranking_metrics(scores, targets, KS)
    computed = {k: float(v) for k, v in metric.compute().items()}
    assert computed == pytest.approx(together, abs=1e-12)
    metric.reset()
    assert float(metric.compute()["recall@5"]) == 0.0


# -- chunked evaluation ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 30, 100])
@pytest.mark.parametrize("mask", [False, True])
def test_chunked_equals_full_with_ties_masking_and_special_values(chunk_size, mask):
    scores, targets, seen = random_case(seed=chunk_size, users=30, items=30, levels=4)
    scores[2, targets[2]] = float("nan")
    scores[3, targets[3]] = float("-inf")
    scores[4, 5:9] = float("inf")
    scores[5, 1:] = float("-inf")
    scores[6, 10:20] = float("nan")
    seen_arg = seen if mask else None
    full = target_ranks(scores, targets, seen_arg)
    for max_k in (1, 5, 40):
        chunked = chunked_target_ranks(
            lambda s, e: scores[:, s:e], targets, scores.shape[1] - 1, chunk_size, max_k, seen_arg
        )
        assert torch.equal(chunked, full.clamp(max=max_k + 1)), (chunk_size, max_k)


def test_chunked_metrics_equal_full_metrics_and_never_score_padding():
    scores, targets, seen = random_case(seed=9, users=50, items=200)
    calls = []

    def score_chunk(start: int, end: int) -> torch.Tensor:
        calls.append((start, end))
        return scores[:, start:end].float()

    before = scores.clone()
    ranks = chunked_target_ranks(lambda s, e: scores[:, s:e], targets, 200, 64, max(KS), seen)
    assert torch.equal(scores, before)  # the caller's scores are never written to
    ranks = chunked_target_ranks(score_chunk, targets, 200, 64, max(KS), seen)
    assert calls[0][0] == 1 and calls[-1][1] == 201
    assert metrics_from_ranks(ranks, KS) == pytest.approx(ranking_metrics(scores.float(), targets, KS, seen))


def test_chunked_bad_inputs():
    scores = torch.rand(2, 6)
    with pytest.raises(DataError, match="targets"):
        chunked_target_ranks(lambda s, e: scores[:, s:e], torch.tensor([0, 1]), 5, 2, 3)
    with pytest.raises(DataError, match="returned"):
        chunked_target_ranks(lambda s, e: scores[:, :2], torch.tensor([1, 1]), 5, 3, 3)
    with pytest.raises(DataError, match="positive"):
        chunked_target_ranks(lambda s, e: scores[:, s:e], torch.tensor([1, 1]), 5, 0, 3)
