"""Click losses for CTR models (``kind = "ctr"``): ``forward(logits [B], labels [B] in {0, 1})``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from zoo.losses.base import Loss
from zoo.registry import LOSSES


@LOSSES.register("logloss")
class LogLoss(Loss):
    """Binary cross-entropy on click logits (the LogLoss of DIN, KAR and RecBole's CTR models)."""

    kind = "ctr"

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits.float().reshape(-1), labels.float().reshape(-1))
