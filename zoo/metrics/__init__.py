"""Ranking metrics (full ranking and ranked lists); see ``zoo.metrics.ranking`` for the exact rules."""

from zoo.metrics.ranking import (
    MISS,
    RankingMetrics,
    metrics_from_ranks,
    ranked_list_metrics,
    ranking_metrics,
    ranks_from_lists,
    target_ranks,
)

__all__ = [
    "MISS",
    "RankingMetrics",
    "metrics_from_ranks",
    "ranked_list_metrics",
    "ranking_metrics",
    "ranks_from_lists",
    "target_ranks",
]
