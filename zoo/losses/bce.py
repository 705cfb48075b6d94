"""Binary cross-entropy with sampled negatives (``bce``): the loss of the original SASRec paper and of S3-Rec."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from zoo.losses.base import LossConfig
from zoo.losses.sampling import UniformNegativesLoss
from zoo.registry import LOSSES


@dataclass
class BCEConfig(LossConfig):
    name: str = "bce"
    num_negatives: int = 1  # negatives per position (the paper and S3-Rec use one)


@LOSSES.register("bce")
class BinaryCrossEntropy(UniformNegativesLoss):
    """Per position: ``-log sigmoid(s_target) - sum_j log(1 - sigmoid(s_neg_j))``, averaged over positions.

    Negatives are drawn uniformly from all items except the target (fresh each step). S3-Rec instead excludes
    every item of the user's sequence; with catalogues of 10k+ items and sequences of ~10 the two differ in a
    handful of draws per epoch, and excluding only the target keeps the loss a function of (state, target).
    """

    Config = BCEConfig

    def forward(self, hidden: torch.Tensor, targets: torch.Tensor, scorer) -> torch.Tensor:
        logits = self.target_and_negative_logits(hidden, targets, scorer)
        per_position = -F.logsigmoid(logits[:, 0]) - F.logsigmoid(-logits[:, 1:]).sum(dim=1)
        return per_position.mean()
