"""Loss families. A model declares the family it produces inputs for (``RecModel.loss_kind``); any registered
loss of that family drops in from config.

* ``item`` losses score a user state against items: ``forward(hidden [N, d], targets [N], scorer)`` where
  ``scorer`` implements :class:`ItemScorer` (all-item logits, logits of given items, item counts).
* ``token`` losses work on next-token logits of item token sequences (titles, Semantic IDs):
  ``forward(logits [B, T, V], labels [B, T] with -100 = ignore)``; a loss that needs the valid next tokens (MSL)
  gets the model's item trie through ``connect(trie=...)``.
* ``ctr`` losses take click logits and 0/1 labels: ``forward(logits [B], labels [B])``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn


@dataclass
class LossConfig:
    name: str = ""


class ItemScorer(Protocol):
    num_items: int

    def score_all(self, hidden: torch.Tensor) -> torch.Tensor:
        """[N, d] -> [N, num_items + 1] logits (column 0 = padding)."""

    def score_items(self, hidden: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """[N, d], [N, k] item ids -> [N, k] logits."""


class Loss(nn.Module):
    Config = LossConfig
    kind = "item"  # "item" | "token" | "ctr"

    def __init__(self, cfg) -> None:
        super().__init__()
        self.cfg = cfg

    def connect(self, **context) -> None:
        """Receive what the loss needs from its model (e.g. ``trie=``, ``item_counts=``). Default: nothing."""
