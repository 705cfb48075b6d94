"""KAR's knowledge adaptors (``RS/layers.py: HEA`` of the official code): two knowledge vectors in, two augmented
vectors out, trained jointly with the CTR backbone.

* ``hybrid`` (HEA, the paper's): ``n_shared`` experts applied to both towers plus ``n_specific`` dedicated experts
  per tower (user reasoning ``x_r``, item fact ``x_f``); each expert an MLP ``dense -> hidden -> out`` (ReLU);
  a softmax gate per tower over its shared + dedicated experts, ``z_t = sum_j g_tj E_j(x_t)``; output
  ``[z_r ; z_f]``. No load-balancing loss (the official ``auxi_loss_weight=0``).
* ``single_gate_moe``: one pool of experts over ``[x_r ; x_f]`` with one softmax gate, output split in two.
* ``mlp``: one MLP per tower.

``forward(x_r, x_f)`` returns ``(z_r, z_f)`` ([B, out] each); ``gates(x_r, x_f)`` the gate weights per tower
(what the tests check sums to 1). :class:`TowerAdaptor` is one tower alone (a model with item knowledge only,
``zoo.models.sasrec_kar``): ``mlp`` one expert, ``hybrid`` a softmax gate over its dedicated experts.
"""

from __future__ import annotations

import torch
from torch import nn

from zoo.errors import ConfigError

ADAPTORS = ("hybrid", "single_gate_moe", "mlp")


def expert(dim_in: int, hidden: int, out: int, dropout: float = 0.0) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim_in, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, out), nn.ReLU())


class HybridExpertAdaptor(nn.Module):
    def __init__(
        self,
        dim_r: int,
        dim_f: int,
        hidden: int = 128,
        out: int = 32,
        n_shared: int = 2,
        n_specific: int = 6,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if dim_r != dim_f and n_shared:
            raise ConfigError(f"shared experts need equal knowledge sizes (reasoning {dim_r}, fact {dim_f})")
        if n_shared + n_specific < 1:
            raise ConfigError("the hybrid adaptor needs at least one expert per tower")
        self.shared = nn.ModuleList(expert(dim_r, hidden, out, dropout) for _ in range(n_shared))
        self.reasoning = nn.ModuleList(expert(dim_r, hidden, out, dropout) for _ in range(n_specific))
        self.fact = nn.ModuleList(expert(dim_f, hidden, out, dropout) for _ in range(n_specific))
        self.gate_r = nn.Linear(dim_r, n_shared + n_specific)
        self.gate_f = nn.Linear(dim_f, n_shared + n_specific)

    def gates(self, x_r: torch.Tensor, x_f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.gate_r(x_r).softmax(-1), self.gate_f(x_f).softmax(-1)

    @staticmethod
    def _mix(x: torch.Tensor, experts: list[nn.Module], gate: torch.Tensor) -> torch.Tensor:
        outputs = torch.stack([e(x) for e in experts], dim=1)  # [B, E, out]
        return (gate.unsqueeze(-1) * outputs).sum(1)

    def forward(self, x_r: torch.Tensor, x_f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g_r, g_f = self.gates(x_r, x_f)
        z_r = self._mix(x_r, [*self.shared, *self.reasoning], g_r)
        z_f = self._mix(x_f, [*self.shared, *self.fact], g_f)
        return z_r, z_f


class SingleGateMoE(nn.Module):
    def __init__(
        self, dim_r: int, dim_f: int, hidden: int = 128, out: int = 32, n_experts: int = 8, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.out = out
        self.experts = nn.ModuleList(expert(dim_r + dim_f, hidden, 2 * out, dropout) for _ in range(n_experts))
        self.gate = nn.Linear(dim_r + dim_f, n_experts)

    def gates(self, x_r: torch.Tensor, x_f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g = self.gate(torch.cat([x_r, x_f], -1)).softmax(-1)
        return g, g

    def forward(self, x_r: torch.Tensor, x_f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([x_r, x_f], -1)
        g = self.gate(x).softmax(-1)
        z = HybridExpertAdaptor._mix(x, list(self.experts), g)
        return z[:, : self.out], z[:, self.out :]


class MLPAdaptor(nn.Module):
    def __init__(self, dim_r: int, dim_f: int, hidden: int = 128, out: int = 32, dropout: float = 0.0) -> None:
        super().__init__()
        self.reasoning, self.fact = expert(dim_r, hidden, out, dropout), expert(dim_f, hidden, out, dropout)

    def gates(self, x_r: torch.Tensor, x_f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ones = x_r.new_ones(len(x_r), 1)
        return ones, ones

    def forward(self, x_r: torch.Tensor, x_f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.reasoning(x_r), self.fact(x_f)


TOWER_ADAPTORS = ("mlp", "hybrid")


class TowerAdaptor(nn.Module):
    """One knowledge tower: ``forward(x) -> [..., out]``; ``hybrid``: a softmax gate over ``n_experts`` experts,
    ``mlp``: one expert."""

    def __init__(self, kind: str, dim: int, hidden: int, out: int, n_experts: int = 8, dropout: float = 0.0) -> None:
        super().__init__()
        if kind not in TOWER_ADAPTORS:
            raise ConfigError(f"unknown one-tower adaptor '{kind}' ({' | '.join(TOWER_ADAPTORS)})")
        count = 1 if kind == "mlp" else n_experts
        if count < 1:
            raise ConfigError("the hybrid adaptor needs at least one expert")
        self.experts = nn.ModuleList(expert(dim, hidden, out, dropout) for _ in range(count))
        self.gate = nn.Linear(dim, count) if kind == "hybrid" else None

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate(x).softmax(-1) if self.gate is not None else x.new_ones(*x.shape[:-1], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate is None:
            return self.experts[0](x)
        outputs = torch.stack([e(x) for e in self.experts], dim=-2)  # [..., E, out]
        return (self.gates(x).unsqueeze(-1) * outputs).sum(-2)


def build_adaptor(
    kind: str, dim_r: int, dim_f: int, hidden: int, out: int, n_shared: int, n_specific: int, dropout: float = 0.0
) -> nn.Module:
    """The adaptor ``kind`` (``hybrid`` | ``single_gate_moe`` | ``mlp``); the single-gate MoE has as many experts
    as one hybrid tower sees (``n_shared + n_specific``)."""
    if kind == "hybrid":
        return HybridExpertAdaptor(dim_r, dim_f, hidden, out, n_shared, n_specific, dropout)
    if kind == "single_gate_moe":
        return SingleGateMoE(dim_r, dim_f, hidden, out, max(1, n_shared + n_specific), dropout)
    if kind == "mlp":
        return MLPAdaptor(dim_r, dim_f, hidden, out, dropout)
    raise ConfigError(f"unknown model.kar_adaptor '{kind}' ({' | '.join(ADAPTORS)})")
