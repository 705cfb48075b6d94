"""Factorization Machine (Rendle, ICDM 2010): the CTR family's baseline. Every feature of a (user, item) pair -- the
user id, the item id and each token of the user's and the item's categorical fields (``zoo.data.ctr``) -- has a
weight and a latent vector; the click logit is

    bias + sum_f w_f + 1/2 * sum_d [(sum_f v_fd)^2 - sum_f v_fd^2]

over the pair's features (multi-valued fields such as genres contribute each of their tokens). With
``model.factor_dim=0`` it is logistic regression on the same features.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from zoo.models.base import ModelConfig, RecModel
from zoo.registry import MODELS


@dataclass
class FMConfig(ModelConfig):
    name: str = "fm"
    factor_dim: int = 16  # latent factors per feature (0 = logistic regression)
    init_std: float = 0.01


@MODELS.register("fm")
class FactorizationMachine(RecModel):
    Config = FMConfig
    task = "ctr"
    loss_kind = "ctr"
    test_overrides = ("model.factor_dim=4",)

    def __init__(self, cfg, datamodule, artifacts: dict | None = None) -> None:
        super().__init__(cfg, datamodule, artifacts)
        features = datamodule.features
        # one id space: [padding, users, items, then each field's vocabulary (its own id 0 = padding)]
        sizes = [self.num_users, self.num_items + 1]
        sizes += [features.vocab_sizes[f"user/{f}"] for f in features.user_fields]
        sizes += [features.vocab_sizes[f"item/{f}"] for f in features.item_fields]
        offsets = torch.tensor([0, *sizes]).cumsum(0)[:-1] + 1
        self.register_buffer("offsets", offsets, persistent=False)
        self.num_user_fields = len(features.user_fields)
        total = int(sum(sizes)) + 1
        self.weights = nn.Embedding(total, 1, padding_idx=0)
        self.bias = nn.Parameter(torch.zeros(1))
        dim = cfg.model.factor_dim
        self.factors = nn.Embedding(total, dim, padding_idx=0) if dim > 0 else None
        nn.init.zeros_(self.weights.weight)
        if self.factors is not None:
            nn.init.normal_(self.factors.weight, std=cfg.model.init_std)
            with torch.no_grad():
                self.factors.weight[0].zero_()

    def feature_ids(self, batch: dict) -> torch.Tensor:
        """[B, F] ids of every feature of the pair in the shared id space (0 = padding)."""
        user = batch["user"].long().view(-1, 1) + self.offsets[0]
        item = batch["item"].long().view(-1, 1) + self.offsets[1]
        bags = [user, item]
        for j, field_ids in enumerate(batch["user_features"].unbind(1)):
            bags.append(torch.where(field_ids > 0, field_ids + self.offsets[2 + j] - 1, 0))
        for j, field_ids in enumerate(batch["item_features"].unbind(1)):
            offset = self.offsets[2 + self.num_user_fields + j]
            bags.append(torch.where(field_ids > 0, field_ids + offset - 1, 0))
        return torch.cat(bags, dim=1)

    def predict(self, batch: dict) -> torch.Tensor:
        ids = self.feature_ids(batch)
        logit = self.bias + self.weights(ids).squeeze(-1).sum(1)
        if self.factors is not None:
            v = self.factors(ids)  # padding rows are zero
            logit = logit + 0.5 * (v.sum(1).pow(2) - v.pow(2).sum(1)).sum(1)
        return logit

    def compute_loss(self, batch: dict) -> torch.Tensor:
        return self.loss(self.predict(batch), batch["label"])
