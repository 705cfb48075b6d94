"""SASRec with KAR's item knowledge as side information (beyond the KAR paper, which injects it into CTR models).

Each item's factual knowledge (KAR's factorization prompt answered by an LLM: the ``kar_item_knowledge`` stage,
item prompts only, so no CTR split and no user prompt is needed) is encoded once by a frozen text encoder (the
``kar_item_vectors`` stage: MiniLM masked mean) and adapted by a trained adaptor (``zoo.modules.experts``, the
fact tower of KAR's adaptors; a plain MLP by default) to the hidden size. The item representation is the sum

    e_i = id_embedding_i + adaptor(knowledge_i)     (row 0, padding, stays zero)

used both as the input embedding of the history and as the tied output table scored against the user state,
so an item with few interactions still has a representation shaped by what the LLM knows of it. Everything else
is SASRec (``zoo.models.sasrec``): the same encoder, training rows, losses and full ranking; with
``model.kar=false`` the model is SASRec itself, so the pair of recipes differs by one key.

Cost: the output table is re-adapted at every training step (the adaptor is trained), one adaptor pass over the
N items; the default MLP (384 -> 128 -> d) costs about 2 x 57k x N multiply-adds a step (0.7 GFLOP on Beauty's
12,101 items), the hybrid adaptor ``n_shared + n_specific`` times that. In evaluation the table is computed once
per validation / test pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from zoo.errors import ConfigError, DataError
from zoo.models.kar.knowledge import KARConfig, generation_settings, load_item_vectors
from zoo.models.sasrec import SASRec, SASRecConfig
from zoo.modules.experts import TOWER_ADAPTORS, TowerAdaptor
from zoo.registry import MODELS


@dataclass
class SASRecKARConfig(SASRecConfig, KARConfig):
    name: str = "sasrec_kar"
    kar: bool = True  # false: SASRec unchanged
    kar_towers: str = "fact"  # item knowledge only (a sequential model has no CTR user reasoning)
    kar_adaptor: str = "mlp"  # mlp (one expert) | hybrid (a gate over kar_shared + kar_specific experts)


class KnowledgeItemEmbedding(nn.Module):
    """``id_embedding(i) + adaptor(knowledge[i])`` with the interface of ``nn.Embedding`` that SASRec uses:
    ``forward(ids)`` and ``weight`` (the full [N+1, d] table; cached while gradients are off, e.g. in a
    validation pass, and recomputed after any ``train()`` / ``eval()`` switch)."""

    def __init__(self, id_embedding: nn.Embedding, knowledge: torch.Tensor, adaptor: nn.Module) -> None:
        super().__init__()
        self.id_embedding = id_embedding
        self.register_buffer("knowledge", knowledge, persistent=False)
        self.adaptor = adaptor
        self._table: torch.Tensor | None = None

    def side(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.adaptor(self.knowledge[ids])
        return out * (ids != 0).unsqueeze(-1).to(out.dtype)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.id_embedding(ids) + self.side(ids)

    @property
    def weight(self) -> torch.Tensor:
        if torch.is_grad_enabled():
            self._table = None
            return self.forward(torch.arange(len(self.knowledge), device=self.knowledge.device))
        if self._table is None:
            self._table = self.forward(torch.arange(len(self.knowledge), device=self.knowledge.device))
        return self._table

    def train(self, mode: bool = True):
        self._table = None
        return super().train(mode)


@MODELS.register("sasrec_kar")
class SASRecKAR(SASRec):
    Config = SASRecKARConfig
    # the registry-driven tests: a tiny Llama writes 4 tokens per item (the shipped texts are SmolLM2's)
    test_overrides = ("model.kar_llm=tiny-llama", "model.kar_max_new_tokens=4", "model.kar_hidden=16")

    @classmethod
    def check_config(cls, cfg) -> None:
        super().check_config(cfg)
        m = cfg.model
        if not m.kar:
            return
        if m.kar_towers != "fact":
            raise ConfigError(
                f"model.kar_towers={m.kar_towers}: the sequential variant takes item knowledge only (fact)"
            )
        if m.kar_adaptor not in TOWER_ADAPTORS:
            raise ConfigError(f"unknown model.kar_adaptor '{m.kar_adaptor}' ({' | '.join(TOWER_ADAPTORS)})")
        generation_settings(m)  # an unknown backend

    @classmethod
    def stages_for(cls, cfg) -> tuple[str, ...]:
        return ("kar_item_vectors",) if cfg.model.kar else ()

    def __init__(self, cfg, datamodule, artifacts: dict | None = None) -> None:
        super().__init__(cfg, datamodule, artifacts)
        m = cfg.model
        if not m.kar:
            return
        vectors = torch.from_numpy(load_item_vectors(self.artifacts["kar_item_vectors"])).float()
        if len(vectors) != self.num_items + 1:
            raise DataError(f"kar_item_vectors has {len(vectors)} rows for {self.num_items} items (+ padding)")
        experts = int(m.kar_shared) + int(m.kar_specific)  # what one tower of KAR's hybrid adaptor mixes
        adaptor = TowerAdaptor(m.kar_adaptor, vectors.shape[1], int(m.kar_hidden), int(m.hidden_size), experts)
        self.encoder.item_embedding = KnowledgeItemEmbedding(self.encoder.item_embedding, vectors, adaptor)
