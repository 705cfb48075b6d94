"""Evaluation metrics: ranking (full, sampled, chunked, ranked lists), generation quality and CTR.

``zoo.metrics.ranking`` states the rules (pessimistic ties, padding, optional seen-item masking);
``RankingMetrics``, ``GenerationMetrics`` and ``CTRMetrics`` are the torchmetrics classes that accumulate them over
batches and devices (``zoo.evaluation`` applies them under the evaluation protocol).
"""

from zoo.metrics.chunked import chunked_target_ranks
from zoo.metrics.ctr import CTRMetrics, auc, ctr_metrics, gauc, log_loss
from zoo.metrics.generation import GenerationMetrics, generation_stats
from zoo.metrics.ranking import (
    MISS,
    RankingMetrics,
    metrics_from_ranks,
    ranked_list_metrics,
    ranking_metrics,
    ranks_from_lists,
    sampled_ranking_metrics,
    sampled_ranks,
    target_ranks,
)

__all__ = [
    "MISS",
    "CTRMetrics",
    "GenerationMetrics",
    "RankingMetrics",
    "auc",
    "chunked_target_ranks",
    "ctr_metrics",
    "gauc",
    "generation_stats",
    "log_loss",
    "metrics_from_ranks",
    "ranked_list_metrics",
    "ranking_metrics",
    "ranks_from_lists",
    "sampled_ranking_metrics",
    "sampled_ranks",
    "target_ranks",
]
