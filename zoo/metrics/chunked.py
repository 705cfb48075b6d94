"""Exact target ranks when items are scored chunk by chunk, so a users x items matrix is never materialised.

Memory is O(B x chunk_size) whatever the catalogue size: 10k users x 1M items evaluate in user batches of a few
hundred and item chunks of tens of thousands (``benchmarks/metrics_chunked.py`` measures it).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from zoo.errors import DataError
from zoo.metrics.ranking import check_item_ids, distinct_seen


def chunked_target_ranks(
    score_chunk: Callable[[int, int], torch.Tensor],
    targets: torch.Tensor,
    num_items: int,
    chunk_size: int,
    max_k: int,
    seen: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pessimistic target ranks with the rules of ``zoo.metrics.ranking.target_ranks``, exact up to ``max_k``.

    ``score_chunk(start, end)`` returns scores of items ``start..end-1`` ([B, end-start]); item 0 (padding) is
    never scored. The result equals ``min(target_ranks(full_scores, targets, seen), max_k + 1)``, so every metric
    at K <= max_k is exact (a capped rank misses every such K).

    How: a running top-(max_k+1) of the scores of the *other*, unmasked items is merged across chunks (the target
    and masked items are set to -inf inside their chunk). Every other item scoring >= the target is in that top
    unless more than max_k are, in which case the target misses anyway. A target scoring -inf (or NaN) ties with
    every other item, so its rank is the number of unmasked other items, counted directly.
    """
    if chunk_size < 1 or max_k < 1:
        raise DataError(f"chunk_size and max_k must be positive, got {chunk_size} and {max_k}")
    check_item_ids(targets, num_items, "targets")
    if seen is not None:
        check_item_ids(seen, num_items, "seen", rows=len(targets), allow_padding=True)
        seen = seen.long()
    targets = targets.long()
    batch = len(targets)
    keep = max_k + 1
    device = targets.device
    rows = torch.arange(batch, device=device)
    target_score: torch.Tensor | None = None

    def masked(start: int, end: int) -> torch.Tensor:
        nonlocal target_score
        raw = score_chunk(start, end)
        if raw.shape != (batch, end - start):
            raise DataError(f"score_chunk({start}, {end}) returned {tuple(raw.shape)}, expected {(batch, end - start)}")
        # one pass that both copies (the target and masked items are overwritten below) and maps NaN to -inf
        scores = torch.nan_to_num(
            raw.to(torch.promote_types(raw.dtype, torch.float32)),
            nan=float("-inf"),
            posinf=float("inf"),
            neginf=float("-inf"),
        )
        if target_score is None:
            target_score = torch.full((batch,), float("-inf"), dtype=scores.dtype, device=device)
        inside = (targets >= start) & (targets < end)
        cols = (targets - start).clamp(0, end - start - 1)
        target_score = torch.where(inside, scores[rows, cols], target_score)
        scores[rows[inside], cols[inside]] = float("-inf")
        if seen is not None:
            local = seen - start
            hide = (local >= 0) & (local < end - start) & (seen != targets.view(-1, 1))
            scores[rows.view(-1, 1).expand_as(seen)[hide], local[hide]] = float("-inf")
        return scores

    top, _ = running_top_k(masked, num_items, keep, chunk_size)
    assert top is not None and target_score is not None
    ranks = (top >= target_score.view(-1, 1)).sum(dim=1)
    lost = target_score == float("-inf")
    if lost.any():
        others = num_items - 1 - distinct_seen(seen, targets).sum(dim=1) if seen is not None else num_items - 1
        ranks = torch.where(lost, torch.as_tensor(others, device=device).clamp(max=keep), ranks)
    return ranks


def running_top_k(
    score_chunk: Callable[[int, int], torch.Tensor], num_items: int, k: int, chunk_size: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best scores of items 1..num_items and their item ids ([B, k] each, best first), scoring items in
    chunks of ``chunk_size`` (0 = all at once) and merging a running top-k, so that no users x items matrix
    larger than one chunk is built. The one chunked top-k loop of the zoo (evaluation, candidate export)."""
    chunk = chunk_size if chunk_size > 0 else num_items
    best_scores = best_items = None
    for start in range(1, num_items + 1, chunk):
        end = min(start + chunk, num_items + 1)
        scores = score_chunk(start, end)
        items = torch.arange(start, end, device=scores.device).expand_as(scores)
        if best_scores is not None:
            scores, items = torch.cat([best_scores, scores], dim=1), torch.cat([best_items, items], dim=1)
        best_scores, order = scores.topk(min(k, scores.shape[1]), dim=1)
        best_items = items.gather(1, order)
    assert best_scores is not None and best_items is not None
    return best_scores, best_items


@torch.no_grad()
def top_k_items(
    score_chunk: Callable[[int, int], torch.Tensor], num_items: int, k: int, chunk_size: int = 0
) -> torch.Tensor:
    """The ``k`` best-scored items [B, k] (best first; padding is never included)."""
    return running_top_k(lambda s, e: score_chunk(s, e).float(), num_items, k, chunk_size)[1]
