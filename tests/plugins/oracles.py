"""Oracle models for the protocol tests: a scoring model and a generative model that rank items by the same
tie-free score f(user, item), so that every evaluation protocol must give them identical metrics."""

from __future__ import annotations

import torch

from zoo.models import RecModel


def oracle_scores(users: torch.Tensor, start: int, end: int) -> torch.Tensor:
    """f(user, item) for items start..end-1 ([B, end-start]): distinct for every item of a row (tie-free)."""
    items = torch.arange(start, end, dtype=torch.float64)
    return torch.sin(users.double().view(-1, 1) * 12.9898 + items.view(1, -1) * 78.233) * 43758.5453 % 1.0


class OracleScorer(RecModel):
    loss_kind = "none"
    trainable = False

    def user_state(self, batch: dict) -> torch.Tensor:
        return batch["user"]

    def score_state(self, state: torch.Tensor, start: int, end: int) -> torch.Tensor:
        scores = oracle_scores(state, start, end)
        if start == 0:
            scores[:, 0] = float("-inf")  # padding
        return scores


class OracleGenerator(RecModel):
    task = "generative"
    loss_kind = "none"
    trainable = False

    def rank(self, batch: dict, k: int, candidates: torch.Tensor | None = None) -> torch.Tensor:
        scores = oracle_scores(batch["user"], 0, self.num_items + 1)
        scores[:, 0] = float("-inf")
        if candidates is not None:  # only the row's candidates can be generated
            allowed = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, candidates, True)
            allowed[:, 0] = False
            scores = scores.masked_fill(~allowed, float("-inf"))
        top = scores.topk(min(k, self.num_items), dim=1)
        return torch.where(torch.isfinite(top.values), top.indices, torch.zeros_like(top.indices))


class NoCandidatesGenerator(OracleGenerator):
    supports_candidates = False
