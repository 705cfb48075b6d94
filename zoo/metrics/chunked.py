"""Exact target ranks when items are scored chunk by chunk, so a users x items matrix is never materialised."""

from __future__ import annotations

from collections.abc import Callable

import torch


def chunked_target_ranks(
    score_chunk: Callable[[int, int], torch.Tensor],
    targets: torch.Tensor,
    num_items: int,
    chunk_size: int,
    max_k: int,
    seen: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pessimistic target ranks (see ``zoo.metrics.ranking``), exact below ``max_k`` and capped above it.

    ``score_chunk(start, end)`` returns scores of items ``start..end-1`` ([B, end-start]). A running top-(max_k+1)
    of the *other* items is merged across chunks; every non-target item scoring >= the target is in it unless
    more than max_k are, in which case the target misses every K <= max_k anyway.
    """
    batch = len(targets)
    keep = max_k + 1
    top = torch.full((batch, 0), float("-inf"), device=targets.device)
    target_score = torch.full((batch,), float("nan"), device=targets.device)
    rows = torch.arange(batch, device=targets.device)
    for start in range(1, num_items + 1, chunk_size):
        end = min(start + chunk_size, num_items + 1)
        scores = score_chunk(start, end).float().clone()
        inside = (targets >= start) & (targets < end)
        cols = (targets - start).clamp(0, end - start - 1)
        target_score = torch.where(inside, scores[rows, cols], target_score)
        scores[rows[inside], cols[inside]] = float("-inf")
        if seen is not None:
            local = seen - start
            ok = (local >= 0) & (local < end - start) & (seen != targets.view(-1, 1)) & (seen != 0)
            r = rows.view(-1, 1).expand_as(seen)[ok]
            scores[r, local[ok]] = float("-inf")
        merged = torch.cat([top, scores], dim=1)
        top = merged.topk(min(keep, merged.shape[1]), dim=1).values
    ahead = (top >= target_score.view(-1, 1)) & torch.isfinite(top)
    return ahead.sum(dim=1)
