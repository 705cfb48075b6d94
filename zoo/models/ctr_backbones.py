"""CTR backbones of KAR (``RS/models.py`` of the official code), each usable alone (``model.kar=false``, the
baseline) and with KAR's knowledge (``model.kar=true``): DIN, DeepFM, DCNv2 and AutoInt, task ``ctr``, loss
``logloss``, on the CTR DataModule (``zoo.data.ctr``).

Inputs, as in KAR: the target item's id and attribute ids (genres, year, ...; multi-valued fields are mean-pooled
bags), the user's categorical features, and the recent history (``data.max_len`` items), each position the sum of
its item, attribute and rating embeddings. The user id is not a feature: under KAR's user split the test users
are unseen in training, so an id embedding would be untrained noise.

KAR's injection (``model.kar=true``): the frozen knowledge vectors of the ``kar_vectors`` stage (one per user,
from the first n_u ratings only; one per item) go through the adaptor (``zoo.modules.experts``, hybrid experts by
default), trained jointly with the backbone; its outputs ``z_r`` and ``z_f`` (``embed_dim`` each) become **two
extra fields** of the field-interaction models (DeepFM, DCNv2, AutoInt) and are **concatenated** to DIN's user
interest and target item before its MLP. ``model.kar_towers=reasoning|fact`` keeps one of the two.

Why a switch on each backbone rather than a separate ``kar`` model: the backbone with and without KAR is the same
class and config, so "adaptor off = the backbone unchanged" holds by construction and the two recipes of a pair
differ by one key. KAR needs the users split (``data.ctr_split=users``): its n_u rule defines which ratings are
knowledge and which are examples.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from zoo.errors import ConfigError
from zoo.models.base import ModelConfig, RecModel
from zoo.models.kar.knowledge import TOWERS, KARConfig, generation_settings, load_vectors
from zoo.modules.experts import ADAPTORS, build_adaptor
from zoo.registry import MODELS

MAX_RATING = 10  # rating embedding ids 0 (padding) .. 10 (ratings are rounded and clipped)


@dataclass
class CTRBackboneConfig(ModelConfig, KARConfig):
    embed_dim: int = 32  # KAR's embed 32 (= the adaptor's output: each augmented vector is one field)
    mlp: list[int] = field(default_factory=lambda: [200, 80])
    dropout: float = 0.0


def mlp(dims: list[int], dropout: float, last: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2 or not last:
            layers += [nn.ReLU(), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


class CTRBackbone(RecModel):
    """Shared embeddings, history encoding and KAR augmentation; a backbone supplies ``logit(fields, parts)``."""

    Config = CTRBackboneConfig
    task = "ctr"
    loss_kind = "ctr"
    test_overrides = ("model.embed_dim=8", "model.mlp=[16,8]")

    @classmethod
    def check_config(cls, cfg) -> None:
        """KAR's settings fail here, before its knowledge stages (hours of generation) run."""
        m = cfg.model
        if not m.kar:
            return
        if str(cfg.data.ctr_split) != "users":
            raise ConfigError("model.kar=true needs data.ctr_split=users (KAR's n_u rule decides what is knowledge)")
        if m.kar_towers not in TOWERS:
            raise ConfigError(f"unknown model.kar_towers '{m.kar_towers}' ({' | '.join(TOWERS)})")
        if m.kar_adaptor not in ADAPTORS:
            raise ConfigError(f"unknown model.kar_adaptor '{m.kar_adaptor}' ({' | '.join(ADAPTORS)})")
        generation_settings(m)  # an unknown backend

    @classmethod
    def stages_for(cls, cfg) -> tuple[str, ...]:
        return ("kar_vectors",) if cfg.model.kar else ()

    def __init__(self, cfg, datamodule, artifacts: dict | None = None) -> None:
        super().__init__(cfg, datamodule, artifacts)
        m, features = cfg.model, datamodule.features
        d = self.embed_dim = int(m.embed_dim)
        self.item_embedding = nn.Embedding(self.num_items + 1, d, padding_idx=0)
        self.item_fields = nn.ModuleList(
            nn.Embedding(features.vocab_sizes[f"item/{f}"], d, padding_idx=0) for f in features.item_fields
        )
        self.user_fields = nn.ModuleList(
            nn.Embedding(features.vocab_sizes[f"user/{f}"], d, padding_idx=0) for f in features.user_fields
        )
        self.rating_embedding = nn.Embedding(MAX_RATING + 1, d, padding_idx=0)
        self.register_buffer("item_table", torch.from_numpy(features.items), persistent=False)
        for table in (self.item_embedding, *self.item_fields, *self.user_fields, self.rating_embedding):
            nn.init.normal_(table.weight, std=0.01)
            with torch.no_grad():
                table.weight[0].zero_()
        self.towers: tuple[str, ...] = ()
        self.adaptor = None
        if m.kar:
            users, items = load_vectors(self.artifacts["kar_vectors"])
            self.register_buffer("user_knowledge", torch.from_numpy(users).float())
            self.register_buffer("item_knowledge", torch.from_numpy(items).float())
            self.towers = {"both": ("reasoning", "fact"), "reasoning": ("reasoning",), "fact": ("fact",)}[m.kar_towers]
            self.adaptor = build_adaptor(
                m.kar_adaptor,
                users.shape[1],
                items.shape[1],
                int(m.kar_hidden),
                d,
                int(m.kar_shared),
                int(m.kar_specific),
                float(m.dropout),
            )
        self.num_fields = 1 + len(self.item_fields) + len(self.user_fields) + 1 + len(self.towers)
        self.build_head(m)

    # -- inputs ---------------------------------------------------------------------------------------------
    @staticmethod
    def _bag(table: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
        """Mean of the embeddings of a bag of token ids (..., T) -> (..., d); an empty bag gives zeros."""
        mask = (ids > 0).unsqueeze(-1).float()
        return (table(ids) * mask).sum(-2) / mask.sum(-2).clamp(min=1)

    def item_parts(self, items: torch.Tensor) -> list[torch.Tensor]:
        """[item id, each attribute field] embeddings of item ids of any shape: a list of (..., d)."""
        attrs = self.item_table[items]  # (..., F_i, T_i)
        return [self.item_embedding(items)] + [self._bag(t, attrs[..., j, :]) for j, t in enumerate(self.item_fields)]

    def history(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """([B, L, d] history position embeddings: item + attributes + rating, [B, L] validity mask)."""
        h = batch["history"].long()
        rating = batch["history_rating"].round().clamp(0, MAX_RATING).long()
        rep = torch.stack(self.item_parts(h), 0).sum(0) + self.rating_embedding(rating)
        mask = h > 0
        return rep * mask.unsqueeze(-1), mask

    def augmented(self, batch: dict) -> list[torch.Tensor]:
        """KAR's augmented vectors (z_r, z_f or one of them), [B, embed_dim] each; [] without KAR."""
        if self.adaptor is None:
            return []
        x_r = self.user_knowledge[batch["user"].long()]
        x_f = self.item_knowledge[batch["item"].long()]
        z_r, z_f = self.adaptor(x_r, x_f)
        return [{"reasoning": z_r, "fact": z_f}[t] for t in self.towers]

    def fields(self, batch: dict) -> torch.Tensor:
        """[B, F, d]: item id, item attributes, user features, mean-pooled history, then KAR's extra fields."""
        users = batch["user_features"].long()
        parts = self.item_parts(batch["item"].long())
        parts += [self._bag(t, users[:, j]) for j, t in enumerate(self.user_fields)]
        rep, mask = self.history(batch)
        parts.append(rep.sum(1) / mask.sum(1, keepdim=True).clamp(min=1))
        parts += self.augmented(batch)
        return torch.stack(parts, dim=1)

    # -- what a backbone supplies ---------------------------------------------------------------------------
    def build_head(self, m) -> None:
        raise NotImplementedError

    def predict(self, batch: dict) -> torch.Tensor:
        raise NotImplementedError

    def compute_loss(self, batch: dict) -> torch.Tensor:
        return self.loss(self.predict(batch), batch["label"])


@MODELS.register("deepfm")
class DeepFM(CTRBackbone):
    """DeepFM (Guo et al., IJCAI 2017): first-order + FM second-order interactions of the fields + a DNN."""

    def build_head(self, m) -> None:
        flat = self.num_fields * self.embed_dim
        self.first_order = nn.Linear(flat, 1)
        self.dnn = mlp([flat, *m.mlp, 1], float(m.dropout), last=True)

    def predict(self, batch: dict) -> torch.Tensor:
        e = self.fields(batch)
        fm = 0.5 * (e.sum(1).pow(2) - e.pow(2).sum(1)).sum(1)
        flat = e.flatten(1)
        return self.first_order(flat).squeeze(-1) + fm + self.dnn(flat).squeeze(-1)


@MODELS.register("dcnv2")
class DCNv2(CTRBackbone):
    """DCN-V2 (Wang et al., WWW 2021), parallel: full-rank cross layers x_{l+1} = x_0 * (W x_l + b) + x_l beside a
    DNN, concatenated into the logit."""

    def build_head(self, m) -> None:
        flat = self.num_fields * self.embed_dim
        self.cross = nn.ModuleList(nn.Linear(flat, flat) for _ in range(int(m.cross_layers)))
        self.dnn = mlp([flat, *m.mlp], float(m.dropout))
        self.out = nn.Linear(flat + (list(m.mlp) or [flat])[-1], 1)

    def predict(self, batch: dict) -> torch.Tensor:
        x0 = self.fields(batch).flatten(1)
        x = x0
        for layer in self.cross:
            x = x0 * layer(x) + x
        return self.out(torch.cat([x, self.dnn(x0)], dim=1)).squeeze(-1)


@MODELS.register("autoint")
class AutoInt(CTRBackbone):
    """AutoInt (Song et al., CIKM 2019): multi-head self-attention over the fields with residual connections,
    the attended fields flattened into the logit."""

    def build_head(self, m) -> None:
        d = self.embed_dim
        if d % int(m.heads):
            raise ConfigError(f"model.embed_dim={d} is not divisible by model.heads={m.heads}")
        self.attention = nn.ModuleList(
            nn.MultiheadAttention(d, int(m.heads), dropout=float(m.dropout), batch_first=True)
            for _ in range(int(m.attention_layers))
        )
        self.residual = nn.ModuleList(nn.Linear(d, d, bias=False) for _ in range(int(m.attention_layers)))
        self.out = nn.Linear(self.num_fields * d, 1)

    def predict(self, batch: dict) -> torch.Tensor:
        x = self.fields(batch)
        for attention, residual in zip(self.attention, self.residual):
            x = torch.relu(attention(x, x, x, need_weights=False)[0] + residual(x))
        return self.out(x.flatten(1)).squeeze(-1)


@MODELS.register("din")
class DIN(CTRBackbone):
    """DIN (Zhou et al., KDD 2018): attention of the target item over the history (an MLP on [h, t, h-t, h*t],
    softmax over the valid positions), the user interest concatenated with the user features, the target item
    and (KAR) the augmented vectors, then an MLP (200, 80) -> logit."""

    def build_head(self, m) -> None:
        d = self.embed_dim
        self.attention = mlp([4 * d, *m.attention_mlp, 1], float(m.dropout), last=True)
        width = d * (len(self.user_fields) + 2 + len(self.towers))
        self.head = mlp([width, *m.mlp, 1], float(m.dropout), last=True)

    def predict(self, batch: dict) -> torch.Tensor:
        target = torch.stack(self.item_parts(batch["item"].long()), 0).sum(0)  # [B, d]
        rep, mask = self.history(batch)
        t = target.unsqueeze(1).expand_as(rep)
        score = self.attention(torch.cat([rep, t, rep - t, rep * t], dim=-1)).squeeze(-1)
        weights = score.masked_fill(~mask, float("-inf")).softmax(1).nan_to_num(0.0)  # no history: zero interest
        interest = (weights.unsqueeze(-1) * rep).sum(1)
        users = batch["user_features"].long()
        parts = [self._bag(t_, users[:, j]) for j, t_ in enumerate(self.user_fields)]
        parts += [target, interest, *self.augmented(batch)]
        return self.head(torch.cat(parts, dim=1)).squeeze(-1)


@dataclass
class DCNv2Config(CTRBackboneConfig):
    cross_layers: int = 3


@dataclass
class AutoIntConfig(CTRBackboneConfig):
    attention_layers: int = 2
    heads: int = 2


@dataclass
class DINConfig(CTRBackboneConfig):
    attention_mlp: list[int] = field(default_factory=lambda: [80, 40])


DeepFM.Config = CTRBackboneConfig
DCNv2.Config, AutoInt.Config, DIN.Config = DCNv2Config, AutoIntConfig, DINConfig
