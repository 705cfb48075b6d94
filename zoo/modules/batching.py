"""Length grouping: run a batch of rows of unequal length as groups of similar length, each padded only to its own
longest row (the same result with far fewer padded positions). Used by the SASRec encoder and TIGER's T5."""

from __future__ import annotations

import torch


def length_groups(
    lengths: torch.Tensor, *, groups: int | None = None, rows: int | None = None, descending: bool = False
) -> list[torch.Tensor]:
    """Row indices sorted by ``lengths`` (stable) and split into ``groups`` groups of near-equal size, or into
    groups of ``rows`` rows; empty groups are dropped."""
    if (groups is None) == (rows is None):
        raise ValueError("give exactly one of groups= and rows=")
    order = torch.argsort(lengths, descending=descending, stable=True)
    chunks = torch.tensor_split(order, groups) if groups is not None else order.split(rows)
    return [chunk for chunk in chunks if len(chunk)]
