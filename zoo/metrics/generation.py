"""Quality of generated ranked lists (beams of generative methods): invalid-ID rate and duplicate rate.

A slot of a ranked list ([B, K] item ids, best first) is exactly one of:

* **invalid**: an id outside 1..N, including 0 (a beam that decoded to no item, an empty slot);
* **duplicate**: a valid id already present earlier in the same list (several beams decoding to one item);
* **unique valid**: everything else.

``invalid_rate`` and ``duplicate_rate`` are fractions of *all* slots (B x K), so invalid + duplicate + unique
valid = 1. Constrained decoding (a prefix trie of valid IDs) should give invalid_rate = 0; unconstrained TIGER
reports it as a metric. The accuracy metrics of such lists come from ``zoo.metrics.ranking.ranks_from_lists``.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

from zoo.errors import DataError


def slot_counts(ranked: torch.Tensor, num_items: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(number of invalid slots, number of duplicate slots) over a batch of ranked lists [B, K]."""
    if ranked.dim() != 2 or ranked.is_floating_point() or ranked.dtype == torch.bool:
        raise DataError(
            f"ranked lists must be a [B, K] integer tensor of item ids, got {ranked.dtype} {tuple(ranked.shape)}"
        )
    valid = (ranked >= 1) & (ranked <= num_items)
    invalid = (~valid).sum()
    # Mark invalid slots with a value below every id, sort each row: a valid id equal to its left neighbour is a
    # repeat of an earlier slot (the count of repeats does not depend on which occurrence is called "first").
    ordered = torch.where(valid, ranked.long(), torch.full_like(ranked, -1, dtype=torch.long)).sort(dim=1).values
    duplicate = ((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 1)).sum()
    return invalid, duplicate


def generation_stats(ranked: torch.Tensor, num_items: int) -> dict[str, float]:
    """``{"invalid_rate", "duplicate_rate"}`` of ranked lists [B, K] over a catalogue of items 1..num_items."""
    invalid, duplicate = slot_counts(ranked, num_items)
    slots = max(ranked.numel(), 1)
    return {"invalid_rate": float(invalid) / slots, "duplicate_rate": float(duplicate) / slots}


class GenerationMetrics(Metric):
    """Accumulates invalid-ID and duplicate rates of ranked lists over batches and DDP ranks (sums of slots)."""

    full_state_update = False
    higher_is_better = False

    def __init__(self, num_items: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_items = int(num_items)
        for name in ("invalid", "duplicate", "slots"):
            self.add_state(name, default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, ranked: torch.Tensor) -> None:  # type: ignore[override]
        invalid, duplicate = slot_counts(ranked, self.num_items)
        self.invalid += invalid.to(self.device)
        self.duplicate += duplicate.to(self.device)
        self.slots += ranked.numel()

    def compute(self) -> dict[str, torch.Tensor]:
        slots = self.slots.clamp(min=1)
        return {"invalid_rate": self.invalid / slots, "duplicate_rate": self.duplicate / slots}
