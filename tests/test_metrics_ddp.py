"""Two CPU processes (gloo) accumulating metrics over uneven shards give the numbers of one process."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from zoo.metrics import CTRMetrics, GenerationMetrics, RankingMetrics, target_ranks

KS = (1, 5, 10)
NUM_ITEMS = 50
# Uneven shards: rank 0 evaluates users 0..28 in two batches, rank 1 users 29..31 in one.
SHARDS = {0: [(0, 4), (4, 29)], 1: [(29, 32)]}


def make_data() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    users = 32
    return {
        "scores": torch.randint(0, 6, (users, NUM_ITEMS + 1), generator=gen).float(),
        "targets": torch.randint(1, NUM_ITEMS + 1, (users,), generator=gen),
        "ranked": torch.randint(0, NUM_ITEMS + 3, (users, 8), generator=gen),
        "probs": torch.rand(users, 5, generator=gen),
        "labels": torch.randint(0, 2, (users, 5), generator=gen),
        "user_ids": torch.arange(users).view(-1, 1).expand(users, 5) % 7,
    }


def evaluate(batches: list[tuple[int, int]]) -> dict[str, float]:
    """Feed the given row ranges to the three accumulating metrics and return their computed values."""
    data = make_data()
    ranking, generation, ctr = RankingMetrics(KS), GenerationMetrics(NUM_ITEMS), CTRMetrics()
    for start, stop in batches:
        rows = slice(start, stop)
        ranking.update(target_ranks(data["scores"][rows], data["targets"][rows]))
        generation.update(data["ranked"][rows])
        ctr.update(data["probs"][rows], data["labels"][rows], data["user_ids"][rows])
    out: dict[str, float] = {}
    for metric in (ranking, generation, ctr):
        out.update({k: float(v) for k, v in metric.compute().items()})
    return out


def _worker(rank: int, store: str, result_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        torch.save(evaluate(SHARDS[rank]), Path(result_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_gloo_equals_one_process(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    single = evaluate(SHARDS[0] + SHARDS[1])
    assert single["recall@10"] > 0 and 0 < single["invalid_rate"] < 1 and "gauc" in single
    for rank in (0, 1):
        synced = torch.load(tmp_path / f"rank{rank}.pt")
        assert synced.keys() == single.keys()
        for key, value in single.items():
            assert synced[key] == pytest.approx(value, abs=1e-12), (rank, key)
    assert evaluate(SHARDS[0])["recall@10"] != pytest.approx(single["recall@10"])  # the shards do differ
