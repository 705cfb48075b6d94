"""A user's own method, registered from outside the package (as CONTRIBUTING.md shows).

``last_item``: the user state is a projection of the most recent history item's embedding, scored against all
item embeddings. Small, trainable, and it takes its loss from the registry like every built-in method.
"""

from dataclasses import dataclass

import torch
from torch import nn

from zoo.data import DataSpec
from zoo.models import ModelConfig, RecModel
from zoo.registry import MODELS


@dataclass
class LastItemConfig(ModelConfig):
    dim: int = 16


@MODELS.register("last_item")
class LastItem(RecModel):
    Config = LastItemConfig
    loss_kind = "item"

    def __init__(self, cfg, datamodule, artifacts=None) -> None:
        super().__init__(cfg, datamodule, artifacts)
        self.items = nn.Embedding(self.num_items + 1, cfg.model.dim, padding_idx=0)
        self.proj = nn.Linear(cfg.model.dim, cfg.model.dim)

    def data_spec(self) -> DataSpec:
        return DataSpec(train_mode="prefix")  # it reads only the last history item (its recipe: data.max_len=1)

    def user_state(self, batch: dict) -> torch.Tensor:
        return self.proj(self.items(batch["history"][:, -1]))

    def score_state(self, state: torch.Tensor, start: int, end: int) -> torch.Tensor:
        return state @ self.items.weight[start:end].T

    # the ItemScorer protocol the item losses use
    def score_all(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden @ self.items.weight.T

    def score_items(self, hidden: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return (hidden.unsqueeze(1) * self.items(items)).sum(-1)

    def compute_loss(self, batch: dict) -> torch.Tensor:
        return self.loss(self.user_state(batch), batch["target"], self)
