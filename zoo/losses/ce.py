"""Full softmax cross-entropy over all items (``ce``) and token cross-entropy (``lml``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from zoo.losses.base import Loss
from zoo.registry import LOSSES


@LOSSES.register("ce")
class CrossEntropy(Loss):
    """-log softmax(h . E^T)[target] over every item; the padding item is excluded from the softmax."""

    kind = "item"

    def forward(self, hidden: torch.Tensor, targets: torch.Tensor, scorer) -> torch.Tensor:
        logits = scorer.score_all(hidden)
        logits[:, 0] = float("-inf")
        return F.cross_entropy(logits.float(), targets)


@LOSSES.register("lml")
class LanguageModelingLoss(Loss):
    """Token cross-entropy over the whole vocabulary on the labelled positions (labels == -100 are ignored)."""

    kind = "token"

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.flatten(0, -2).float(), labels.flatten(), ignore_index=-100)
