"""Sampled softmax with logQ correction (``sampled_softmax``): a softmax over the target and k sampled items.

Each candidate's logit is corrected by ``- log q(item)`` (Bengio & Senecal 2008; Yi et al. 2019), so that the
sampled loss is an estimate of the full softmax whatever the proposal q. Under ``uniform`` sampling q is the same
for every item and the correction cancels; under ``popularity`` sampling it removes the bias towards popular
items. A popularity-sampled negative equal to the target (an accidental hit) is dropped from the softmax.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from zoo.errors import ConfigError
from zoo.losses.base import Loss, LossConfig
from zoo.losses.sampling import PopularitySampler, uniform_negatives
from zoo.registry import LOSSES

SAMPLERS = ("uniform", "popularity")


@dataclass
class SampledSoftmaxConfig(LossConfig):
    name: str = "sampled_softmax"
    num_negatives: int = 100  # k negatives per position
    sampler: str = "uniform"  # uniform (over items except the target) | popularity (needs item counts)
    alpha: float = 1.0  # popularity sampler: q(i) proportional to count(i) ** alpha
    logq_correction: bool = True  # subtract log q(item) from every candidate's logit


@LOSSES.register("sampled_softmax")
class SampledSoftmax(Loss):
    """``-log softmax([s_target - log q(target), s_neg_1 - log q(neg_1), ...])[0]`` averaged over positions.

    Popularity sampling needs the training item counts, handed over by the model with
    ``loss.connect(item_counts=...)`` (SASRec does so in ``prepare``).
    """

    Config = SampledSoftmaxConfig
    kind = "item"

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        if cfg.sampler not in SAMPLERS:
            raise ConfigError(f"unknown loss.sampler '{cfg.sampler}' ({' | '.join(SAMPLERS)})")
        if cfg.num_negatives < 1:
            raise ConfigError(f"loss.num_negatives must be >= 1, got {cfg.num_negatives}")
        self.popularity: PopularitySampler | None = None

    def connect(self, item_counts: torch.Tensor | None = None, **context) -> None:
        """Receive the training item counts ([N+1], index 0 = padding) for the popularity sampler."""
        if item_counts is not None and self.cfg.sampler == "popularity":
            self.popularity = PopularitySampler(item_counts, self.cfg.alpha)

    def forward(self, hidden: torch.Tensor, targets: torch.Tensor, scorer) -> torch.Tensor:
        k = self.cfg.num_negatives
        if self.cfg.sampler == "uniform":
            negatives = uniform_negatives(targets, k, scorer.num_items)
            candidates = torch.cat([targets.view(-1, 1), negatives], dim=1)
            logits = scorer.score_items(hidden, candidates).float()
            # q is the same for every item: the correction is a constant shift and cancels in the softmax.
            return F.cross_entropy(logits, torch.zeros_like(targets))
        sampler = self._popularity_sampler(scorer.num_items, hidden.device)
        negatives = sampler.sample(len(targets), k)
        candidates = torch.cat([targets.view(-1, 1), negatives], dim=1)
        logits = scorer.score_items(hidden, candidates).float()
        if self.cfg.logq_correction:
            logits = logits - sampler.log_q(candidates)
        hits = torch.zeros_like(candidates, dtype=torch.bool)
        hits[:, 1:] = negatives == targets.view(-1, 1)
        logits = logits.masked_fill(hits, float("-inf"))
        return F.cross_entropy(logits, torch.zeros_like(targets))

    def _popularity_sampler(self, num_items: int, device: torch.device) -> PopularitySampler:
        if self.popularity is None:
            raise ConfigError(
                "loss.sampler=popularity needs item counts: the model must call loss.connect(item_counts=...)"
            )
        if self.popularity.num_items != num_items:
            raise ConfigError(f"item counts cover {self.popularity.num_items} items, the model scores {num_items}")
        return self.popularity.to(device)
