"""Invalid-ID and duplicate rates of generated ranked lists, against a plain Python count."""

from __future__ import annotations

import pytest
import torch

from zoo.errors import DataError
from zoo.metrics import GenerationMetrics, generation_stats


def python_counts(ranked: torch.Tensor, num_items: int) -> tuple[int, int]:
    invalid = duplicate = 0
    for row in ranked.tolist():
        earlier: set[int] = set()
        for item in row:
            if not 1 <= item <= num_items:
                invalid += 1
            elif item in earlier:
                duplicate += 1
            else:
                earlier.add(item)
    return invalid, duplicate


def test_hand_computed_rates():
    ranked = torch.tensor([[1, 2, 2, 0, 99, 1], [3, 4, 5, 6, 7, 8]])
    stats = generation_stats(ranked, num_items=10)
    assert stats == {"invalid_rate": 2 / 12, "duplicate_rate": 2 / 12}
    assert generation_stats(torch.tensor([[-3, 0, 11]]), 10) == {"invalid_rate": 1.0, "duplicate_rate": 0.0}


def test_random_lists_match_python_and_accumulate():
    gen = torch.Generator().manual_seed(0)
    ranked = torch.randint(-2, 14, (64, 10), generator=gen)
    invalid, duplicate = python_counts(ranked, 12)
    assert generation_stats(ranked, 12) == pytest.approx(
        {"invalid_rate": invalid / ranked.numel(), "duplicate_rate": duplicate / ranked.numel()}
    )
    metric = GenerationMetrics(num_items=12)
    assert isinstance(metric, GenerationMetrics)
    for part in ranked.split([1, 40, 23]):
        metric.update(part)
    computed = {k: float(v) for k, v in metric.compute().items()}
    assert computed == pytest.approx(generation_stats(ranked, 12), abs=1e-15)


def test_bad_lists():
    with pytest.raises(DataError):
        generation_stats(torch.tensor([1.0, 2.0]), 10)
    with pytest.raises(DataError):
        GenerationMetrics(num_items=5).update(torch.tensor([1, 2, 3]))
