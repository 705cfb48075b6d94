"""Ranking metrics for leave-one-out evaluation (one relevant item per user), full ranking and sampled candidates.

Everything is computed from the 0-based **rank of the target**, so every K is evaluated in one pass:

* **Ties never favour the target (pessimistic rule).** ``rank = #{items i != target, not masked: score_i >=
  score_target}``: an item tied with the target is counted ahead of it, so a method that gives many items the
  same score (popularity, a generative method that scores only its beams) is never rewarded for the tie. This is
  the worst position among all tie orders; RecBole, which breaks ties by ``torch.topk`` order, can only report
  equal or higher numbers on tied score matrices and exactly equal ones on tie-free matrices.
* **NaN scores count as -inf**: a NaN target is behind (tied with) every other item, a NaN item ties at -inf.
* **Padding never ranks**: column 0 of a score matrix is the padding item and is ignored.
* **Masking already-seen items is optional and off by default**, as in the S3-Rec / P5 / TIGER protocol (a
  leave-one-out target can be an item the user saw before). ``seen`` ([B, L] ids, 0 = padding) removes those items
  from the ranking; the target itself is never masked.
* Recall@K = HR@K = [rank < K];  NDCG@K = 1/log2(rank + 2) if rank < K else 0;
  MRR@K = 1/(rank + 1) if rank < K else 0;  Precision@K = [rank < K] / K.
  These are RecBole's definitions (``recbole.evaluator.metrics`` Recall, Hit, NDCG, MRR, Precision) for one
  positive item per user; ``benchmarks/peers/recbole_metrics.py`` checks them against RecBole's own code.
* **Sampled-candidate mode** (``sampled_ranks``): each user has a row of candidate scores with the target in
  column 0 and sampled negatives after it; same tie rule, ranks among the candidates only.
* **Generative methods** give ranked id lists instead of scores (``ranks_from_lists``): rank = position of the
  first occurrence of the target in the list as emitted (invalid ids and repeats occupy their slots), a miss when
  absent. See ``zoo.metrics.generation`` for the invalid-ID and duplicate rates of such lists.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
from torchmetrics import Metric

from zoo.errors import ConfigError, DataError

MISS = 1 << 30  # rank of a target that is not ranked at all (absent from a ranked list)
METRIC_NAMES = ("recall", "hr", "ndcg", "mrr", "precision")
COUNT_BLOCK_ELEMENTS = 1 << 22  # scores compared per step in target_ranks (bounds its temporary memory)


def target_ranks(scores: torch.Tensor, targets: torch.Tensor, seen: torch.Tensor | None = None) -> torch.Tensor:
    """0-based pessimistic rank of each target in ``scores`` ([B, N+1], column 0 = padding), exact (uncapped).

    ``seen`` ([B, L] item ids, 0 = padding) masks already-seen items (never the target itself). Items are counted
    in column blocks, so the only extra memory is O(B x block) whatever N (a [B, N] boolean matrix, and the int64
    copy ``sum`` would make of it, are never built).
    """
    if scores.dim() != 2 or scores.shape[1] < 2:
        raise DataError(f"scores must be [users, num_items + 1] with column 0 = padding, got {tuple(scores.shape)}")
    num_items = scores.shape[1] - 1
    check_item_ids(targets, num_items, "targets", rows=scores.shape[0])
    targets = targets.view(-1, 1).long()
    target_score = scores.gather(1, targets)
    if scores.is_floating_point():
        target_score = target_score.nan_to_num(nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))
    block = max(1, COUNT_BLOCK_ELEMENTS // max(len(scores), 1))
    at_least = torch.zeros(len(scores), dtype=torch.long, device=scores.device)
    for start in range(1, num_items + 1, block):
        at_least += (scores[:, start : start + block] >= target_score).sum(dim=1, dtype=torch.int32)
    ranks = at_least - 1  # the target itself scores >= its own score
    masked = torch.zeros_like(ranks)
    if seen is not None:
        check_item_ids(seen, num_items, "seen", rows=scores.shape[0], allow_padding=True)
        distinct = distinct_seen(seen.long(), targets.view(-1))
        masked = distinct.sum(dim=1)
        ranks -= (distinct & (scores.gather(1, seen.long().sort(dim=1).values) >= target_score)).sum(dim=1)
    if scores.is_floating_point():
        # a -inf (or NaN) target ties with every other unmasked item, NaN ones included
        ranks = torch.where(target_score.view(-1) == float("-inf"), num_items - 1 - masked, ranks)
    return ranks


def distinct_seen(seen: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mask over ``seen.sort(dim=1).values`` marking each distinct masked item once (not padding, not the target)."""
    ordered = seen.sort(dim=1).values
    first = torch.ones_like(ordered, dtype=torch.bool)
    first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    return first & (ordered != 0) & (ordered != targets.view(-1, 1))


def sampled_ranks(candidate_scores: torch.Tensor, candidates: torch.Tensor | None = None) -> torch.Tensor:
    """0-based pessimistic rank of the target among sampled candidates ([B, C] scores, target in column 0).

    Same rule as ``target_ranks``: ``rank = #{j >= 1: score_j >= score_0}`` (NaN = -inf). ``candidates`` ([B, C]
    item ids, optional) lets rows of unequal length and careless samplers be handled honestly: a column whose id
    is 0 (padding) or equal to the target's id is not a negative and is ignored.
    """
    if candidate_scores.dim() != 2 or candidate_scores.shape[1] < 1:
        raise DataError(f"candidate_scores must be [users, candidates], got {tuple(candidate_scores.shape)}")
    target_score = candidate_scores[:, :1]
    negatives = candidate_scores[:, 1:]
    if candidate_scores.is_floating_point():
        target_score = target_score.nan_to_num(nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))
    ahead = negatives >= target_score
    if candidate_scores.is_floating_point():
        ahead |= target_score == float("-inf")
    if candidates is not None:
        if candidates.shape != candidate_scores.shape:
            raise DataError(
                f"candidates {tuple(candidates.shape)} must have the shape of candidate_scores "
                f"{tuple(candidate_scores.shape)}"
            )
        ahead &= (candidates[:, 1:] != 0) & (candidates[:, 1:] != candidates[:, :1])
    return ahead.sum(dim=1)


def ranks_from_lists(ranked: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """0-based rank of each target in ranked item-id lists ([B, L], best first, 0 = empty slot); MISS if absent.

    Only the first occurrence counts: a list that repeats an item is not credited twice.
    """
    hit = ranked == targets.view(-1, 1)
    hit &= ranked != 0
    pos = torch.where(hit.any(dim=1), hit.float().argmax(dim=1), torch.full_like(targets, MISS))
    return pos.long()


def metrics_from_ranks(ranks: torch.Tensor, ks: Sequence[int]) -> dict[str, float]:
    """Mean Recall/HR/NDCG/MRR/Precision@K over users for every K in ``ks`` (keys like ``"ndcg@10"``)."""
    sums = _metric_sums(ranks, check_ks(ks))
    n = max(len(ranks), 1)
    return {name: float(value) / n for name, value in sums.items()}


def ranking_metrics(
    scores: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = (5, 10, 20), seen: torch.Tensor | None = None
) -> dict[str, float]:
    """Full-ranking metrics of a score matrix ([users, N+1], column 0 = padding) against one target per user."""
    return metrics_from_ranks(target_ranks(scores, targets, seen), ks)


def sampled_ranking_metrics(
    candidate_scores: torch.Tensor, ks: Sequence[int] = (5, 10, 20), candidates: torch.Tensor | None = None
) -> dict[str, float]:
    """Sampled-candidate metrics: [users, C] scores with the target in column 0 (see ``sampled_ranks``)."""
    return metrics_from_ranks(sampled_ranks(candidate_scores, candidates), ks)


def ranked_list_metrics(
    ranked: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = (5, 10, 20)
) -> dict[str, float]:
    """The same metrics from ranked id lists (generative methods). Lists shorter than K simply miss."""
    return metrics_from_ranks(ranks_from_lists(ranked, targets), ks)


def check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    """Validate the cut-offs (positive integers); ConfigError otherwise."""
    if isinstance(ks, (int, str)) or not len(ks):
        raise ConfigError(f"eval.ks must be a non-empty list of positive integers, got {ks!r}")
    out = []
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
            raise ConfigError(f"eval.ks must be a non-empty list of positive integers, got {list(ks)!r}")
        out.append(int(k))
    return tuple(out)


def check_item_ids(
    ids: torch.Tensor, num_items: int, what: str, rows: int | None = None, allow_padding: bool = False
) -> None:
    """Raise DataError unless ``ids`` are integer item ids in 1..num_items (0 allowed with ``allow_padding``)."""
    if ids.is_floating_point() or ids.dtype == torch.bool:
        raise DataError(f"{what} must be integer item ids, got dtype {ids.dtype}")
    if rows is not None and ids.shape[0] != rows:
        raise DataError(f"{what} has {ids.shape[0]} rows for {rows} score rows")
    if ids.numel():
        low = 0 if allow_padding else 1
        lo, hi = int(ids.min()), int(ids.max())
        if lo < low or hi > num_items:
            raise DataError(f"{what} must be item ids in {low}..{num_items}, found {lo if lo < low else hi}")


def _metric_sums(ranks: torch.Tensor, ks: Sequence[int]) -> dict[str, torch.Tensor]:
    """Per-metric sums over users, all K at once (float64)."""
    ranks = ranks.detach().double().view(-1, 1)
    cut = torch.tensor(ks, dtype=torch.float64, device=ranks.device).view(1, -1)
    hit = (ranks < cut).double()  # [B, len(ks)]
    finite = ranks.clamp(max=MISS)
    per_k = {
        "recall": hit,
        "hr": hit,
        "ndcg": hit / torch.log2(finite + 2.0),
        "mrr": hit / (finite + 1.0),
        "precision": hit / cut,
    }
    sums = {name: values.sum(dim=0) for name, values in per_k.items()}
    return {f"{name}@{k}": sums[name][i] for i, k in enumerate(ks) for name in METRIC_NAMES}


class RankingMetrics(Metric):
    """Accumulates the metrics above from target ranks over batches and DDP ranks.

    States are float64 sums plus a count, reduced by sum across processes, so the result is exactly the mean over
    all users whatever the batching or the number of processes (uneven shards included). ``update(ranks)`` takes
    the ranks of ``target_ranks`` / ``sampled_ranks`` / ``ranks_from_lists`` / ``chunked_target_ranks``.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, ks: Sequence[int] = (5, 10, 20), **kwargs) -> None:
        super().__init__(**kwargs)
        self.ks = check_ks(ks)
        self.names = list(_metric_sums(torch.zeros(1), self.ks))
        for name in self.names:
            self.add_state(_state(name), default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, ranks: torch.Tensor) -> None:  # type: ignore[override]
        if ranks.dim() != 1 or ranks.is_floating_point():
            raise DataError(f"RankingMetrics.update takes a 1-D integer tensor of ranks, got {tuple(ranks.shape)}")
        for name, value in _metric_sums(ranks, self.ks).items():
            setattr(self, _state(name), getattr(self, _state(name)) + value.to(self.device))
        self.count += len(ranks)

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.count.clamp(min=1)
        return {name: getattr(self, _state(name)) / n for name in self.names}


def _state(name: str) -> str:
    return "sum_" + name.replace("@", "_at_")
