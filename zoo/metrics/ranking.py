"""Ranking metrics for leave-one-out evaluation (one relevant item per user).

Everything is computed from the 0-based **rank of the target**:

* ``rank = #{items i != target, i != padding(0): score_i >= score_target}``. Ties count *against* the target
  (pessimistic), so a method that gives many items the same score is never rewarded for it.
* Column 0 of a score matrix is the padding item and never ranks.
* Recall@K = HR@K = [rank < K];  NDCG@K = 1/log2(rank + 2) if rank < K else 0;
  MRR@K = 1/(rank + 1) if rank < K else 0;  Precision@K = Recall@K / K.
  These equal RecBole's definitions (``recbole.evaluator.metrics``) for one positive item per user.
* Generative methods give ranked id lists instead of scores: rank = position of the target in the list,
  or a miss when absent.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric

MISS = 1 << 30  # rank of a target that is not ranked at all (absent from a ranked list)
METRIC_NAMES = ("recall", "hr", "ndcg", "mrr", "precision")


def target_ranks(scores: torch.Tensor, targets: torch.Tensor, seen: torch.Tensor | None = None) -> torch.Tensor:
    """0-based pessimistic rank of each target in ``scores`` ([B, N+1], column 0 = padding).

    ``seen`` ([B, L] item ids, 0 = padding) masks already-seen items (never the target itself).
    """
    scores = scores.float()
    target_score = scores.gather(1, targets.view(-1, 1))
    ahead = scores >= target_score
    ahead[:, 0] = False
    ahead.scatter_(1, targets.view(-1, 1), False)
    if seen is not None:
        seen_mask = torch.zeros_like(ahead)
        seen_mask.scatter_(1, seen, True)
        seen_mask[:, 0] = False
        seen_mask.scatter_(1, targets.view(-1, 1), False)
        ahead &= ~seen_mask
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
    """Mean Recall/HR/NDCG/MRR/Precision@K over users for every K in ``ks``."""
    sums = _metric_sums(ranks, ks)
    n = max(len(ranks), 1)
    return {name: float(value) / n for name, value in sums.items()}


def ranking_metrics(
    scores: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = (5, 10, 20), seen: torch.Tensor | None = None
) -> dict[str, float]:
    """Full-ranking metrics of a score matrix ([users, N+1], column 0 = padding) against one target per user."""
    return metrics_from_ranks(target_ranks(scores, targets, seen), ks)


def ranked_list_metrics(ranked: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = (5, 10, 20)) -> dict:
    """The same metrics from ranked id lists (generative methods). Lists shorter than K simply miss."""
    return metrics_from_ranks(ranks_from_lists(ranked, targets), ks)


def _metric_sums(ranks: torch.Tensor, ks: Sequence[int]) -> dict[str, torch.Tensor]:
    ranks = ranks.double()
    out: dict[str, torch.Tensor] = {}
    for k in ks:
        hit = (ranks < k).double()
        out[f"recall@{k}"] = hit.sum()
        out[f"hr@{k}"] = hit.sum()
        out[f"ndcg@{k}"] = (hit / torch.log2(ranks.clamp(max=MISS) + 2.0)).sum()
        out[f"mrr@{k}"] = (hit / (ranks + 1.0)).sum()
        out[f"precision@{k}"] = hit.sum() / k
    return out


class RankingMetrics(Metric):
    """Accumulates the metrics above over batches and DDP ranks (sums in float64, so the result is exactly the
    mean over all users whatever the batching or the number of processes)."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, ks: Sequence[int] = (5, 10, 20), **kwargs) -> None:
        super().__init__(**kwargs)
        self.ks = tuple(int(k) for k in ks)
        self.names = list(_metric_sums(torch.zeros(1), self.ks))
        for name in self.names:
            self.add_state(_state(name), default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, ranks: torch.Tensor) -> None:  # type: ignore[override]
        for name, value in _metric_sums(ranks.detach(), self.ks).items():
            setattr(self, _state(name), getattr(self, _state(name)) + value.to(self.device))
        self.count += len(ranks)

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.count.clamp(min=1)
        return {name: getattr(self, _state(name)) / n for name in self.names}


def _state(name: str) -> str:
    return "sum_" + name.replace("@", "_at_")
