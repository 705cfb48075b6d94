"""Bayesian personalised ranking with sampled negatives (``bpr``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from zoo.losses.base import LossConfig
from zoo.losses.sampling import UniformNegativesLoss
from zoo.registry import LOSSES


@dataclass
class BPRConfig(LossConfig):
    name: str = "bpr"
    num_negatives: int = 1  # negatives per position; the loss averages over them


@LOSSES.register("bpr")
class BayesianPersonalizedRanking(UniformNegativesLoss):
    """``-log sigmoid(s_target - s_neg)`` averaged over positions and negatives; negatives are uniform over all
    items except the target."""

    Config = BPRConfig

    def forward(self, hidden: torch.Tensor, targets: torch.Tensor, scorer) -> torch.Tensor:
        logits = self.target_and_negative_logits(hidden, targets, scorer)
        return -F.logsigmoid(logits[:, :1] - logits[:, 1:]).mean()
