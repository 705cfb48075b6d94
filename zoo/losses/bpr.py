"""Bayesian personalised ranking with sampled negatives (``bpr``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from zoo.errors import ConfigError
from zoo.losses.base import Loss, LossConfig
from zoo.losses.sampling import uniform_negatives
from zoo.registry import LOSSES


@dataclass
class BPRConfig(LossConfig):
    name: str = "bpr"
    num_negatives: int = 1  # negatives per position; the loss averages over them


@LOSSES.register("bpr")
class BayesianPersonalizedRanking(Loss):
    """``-log sigmoid(s_target - s_neg)`` averaged over positions and negatives; negatives are uniform over all
    items except the target."""

    Config = BPRConfig
    kind = "item"

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        if cfg.num_negatives < 1:
            raise ConfigError(f"loss.num_negatives must be >= 1, got {cfg.num_negatives}")

    def forward(self, hidden: torch.Tensor, targets: torch.Tensor, scorer) -> torch.Tensor:
        negatives = uniform_negatives(targets, self.cfg.num_negatives, scorer.num_items)
        logits = scorer.score_items(hidden, torch.cat([targets.view(-1, 1), negatives], dim=1)).float()
        return -F.logsigmoid(logits[:, :1] - logits[:, 1:]).mean()
