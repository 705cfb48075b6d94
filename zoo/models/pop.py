"""Most-popular baseline: every user gets the items ranked by how often they occur in the histories available
before the evaluated target. Ties (equal counts) count against the target, as for every method."""

from __future__ import annotations

import torch

from zoo.models.base import RecModel
from zoo.registry import MODELS


@MODELS.register("pop")
class MostPopular(RecModel):
    loss_kind = "none"
    trainable = False

    def __init__(self, cfg, datamodule, artifacts: dict | None = None) -> None:
        super().__init__(cfg, datamodule, artifacts)
        self.register_buffer("val_counts", torch.zeros(self.num_items + 1))
        self.register_buffer("test_counts", torch.zeros(self.num_items + 1))

    def prepare(self, datamodule) -> None:
        self.val_counts.copy_(torch.from_numpy(datamodule.train_item_counts("val")).float())
        self.test_counts.copy_(torch.from_numpy(datamodule.train_item_counts("test")).float())

    def user_state(self, batch: dict) -> torch.Tensor:
        counts = self.test_counts if self.trainer is not None and self.trainer.testing else self.val_counts
        return counts.expand(len(batch["target"]), -1)

    def score_state(self, state: torch.Tensor, start: int, end: int) -> torch.Tensor:
        return state[:, start:end]
