"""Negative samplers shared by the sampled item losses (``bce``, ``bpr``, ``sampled_softmax``).

Both draw from torch's global generator (on the targets' device), so ``lightning.seed_everything`` makes every
draw reproducible; no sampler keeps state of its own beyond the item distribution.
"""

from __future__ import annotations

import torch
from torch import nn

from zoo.errors import ConfigError
from zoo.losses.base import Loss


def uniform_negatives(targets: torch.Tensor, num_negatives: int, num_items: int) -> torch.Tensor:
    """``num_negatives`` items per target drawn uniformly from ``1..num_items`` minus the target itself.

    Exact without rejection loops: draw from the ``num_items - 1`` other ids and shift every draw at or above
    the target up by one. Returns [N, num_negatives] int64.
    """
    if num_items < 2:
        raise ConfigError(f"negative sampling needs at least 2 items, the catalogue has {num_items}")
    draws = torch.randint(1, num_items, (len(targets), num_negatives), device=targets.device)
    return draws + (draws >= targets.view(-1, 1)).long()


class PopularitySampler(nn.Module):
    """Draws items with probability proportional to ``max(count, 1) ** alpha`` (padding never drawn).

    Counts of zero are raised to one so that every real item can be drawn and has a finite log-probability
    (the logQ correction needs log q of the positive as well as of the negatives).
    """

    def __init__(self, item_counts: torch.Tensor, alpha: float = 1.0) -> None:
        super().__init__()
        counts = torch.as_tensor(item_counts, dtype=torch.float64).clone()
        if counts.ndim != 1 or len(counts) < 3:
            raise ConfigError("item_counts must be a 1-d tensor of [num_items + 1] counts (index 0 = padding)")
        if (counts < 0).any():
            raise ConfigError("item_counts must be non-negative")
        weights = counts.clamp(min=1.0) ** alpha
        weights[0] = 0.0
        probs = weights / weights.sum()
        self.register_buffer("probs", probs.float(), persistent=False)
        log_probs = torch.full_like(probs, float("-inf"))
        log_probs[1:] = probs[1:].log()
        self.register_buffer("log_probs", log_probs.float(), persistent=False)

    @property
    def num_items(self) -> int:
        return len(self.probs) - 1

    def sample(self, num_rows: int, num_negatives: int) -> torch.Tensor:
        """[num_rows, num_negatives] item ids, drawn with replacement."""
        flat = torch.multinomial(self.probs, num_rows * num_negatives, replacement=True)
        return flat.view(num_rows, num_negatives)

    def log_q(self, items: torch.Tensor) -> torch.Tensor:
        """Log sampling probability of each item id (any shape)."""
        return self.log_probs[items]


class UniformNegativesLoss(Loss):
    """Base of losses that score each target against ``cfg.num_negatives`` uniform negatives (bce, bpr)."""

    kind = "item"

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        if cfg.num_negatives < 1:
            raise ConfigError(f"loss.num_negatives must be >= 1, got {cfg.num_negatives}")

    def target_and_negative_logits(self, hidden: torch.Tensor, targets: torch.Tensor, scorer) -> torch.Tensor:
        """[N, 1 + num_negatives] float32 logits: column 0 the target, then fresh uniform negatives."""
        negatives = uniform_negatives(targets, self.cfg.num_negatives, scorer.num_items)
        return scorer.score_items(hidden, torch.cat([targets.view(-1, 1), negatives], dim=1)).float()
