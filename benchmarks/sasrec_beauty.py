"""SASRec on Amazon Beauty (S3-Rec preprocessing, leave-one-out, full ranking) with both literature losses.

``ce`` (recipe ``sasrec_beauty``: full softmax cross-entropy) and ``bce`` (recipe ``sasrec_bce_beauty``: one
sampled negative per position, the S3-Rec setting behind the SASRec row of the TIGER table, NDCG@10 0.0318).
Each run writes ``benchmarks/results/sasrec_beauty_<loss>.json`` in the per-run format of
``benchmarks.common.write_result``: test metrics, the paper's numbers beside them, the resolved config, epochs run,
the validation curve, wall time, hardware (with load average) and peak memory.

The machine is shared, so training can be capped in wall time (``--max-minutes``; the run then reports the best
checkpoint reached and says it was capped). Needs the datasets: ``ZOO_DATA_DIR=../shared/datasets``.
Usage: ``nohup python3 -m benchmarks.sasrec_beauty --losses ce bce > /tmp/beauty.log 2>&1 &``.

``--speed`` instead times training steps (forward, backward, Adam) on Beauty batches with the encoder's length
grouping off and on, and writes ``sasrec_beauty_speed.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from benchmarks.common import write_result
from zoo.config import compose
from zoo.run import run

RECIPES = {"ce": "sasrec_beauty", "bce": "sasrec_bce_beauty"}
PAPER = {  # TIGER paper Table 1, SASRec trained as in S3-Rec (BCE)
    "source": "TIGER (Rajput et al., NeurIPS 2023) Table 1, SASRec row, Beauty",
    "test/recall@5": 0.0387,
    "test/ndcg@5": 0.0249,
    "test/recall@10": 0.0605,
    "test/ndcg@10": 0.0318,
}


def validation_curve(run_dir: Path) -> list[float]:
    """Validation NDCG@10 after each epoch, from the run's CSV log."""
    path = run_dir / "logs" / "csv" / "metrics.csv"
    if not path.is_file():
        return []
    with path.open() as f:
        return [round(float(row["val/ndcg@10"]), 5) for row in csv.DictReader(f) if row.get("val/ndcg@10")]


def run_one(loss: str, max_minutes: float, seed: int, run_root: Path, extra: list[str]) -> Path:
    """Train and test one recipe, then record it."""
    overrides = [f"seed={seed}", "trainer.enable_progress_bar=false", *extra]
    if max_minutes > 0:
        minutes = int(max_minutes)
        overrides.append(f"trainer.max_time=00:{minutes // 60:02d}:{minutes % 60:02d}:00")
    run_dir = run_root / RECIPES[loss] / time.strftime("%Y%m%d-%H%M%S")
    cfg = compose(RECIPES[loss], [*overrides, f"run_dir={run_dir}"])
    run(cfg)
    return record(loss, run_dir, max_minutes)


def record(loss: str, run_dir: Path, max_minutes: float, note: str = "") -> Path:
    """Write ``sasrec_beauty_<loss>.json`` from a finished run directory (config.yaml, metrics.json, CSV log)."""
    cfg = OmegaConf.load(run_dir / "config.yaml")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    curve = validation_curve(run_dir)
    payload = {
        "method": "sasrec",
        "dataset": "beauty",
        "loss": loss,
        "recipe": RECIPES[loss],
        "command": f"python -m benchmarks.sasrec_beauty --losses {loss} --max-minutes {max_minutes}",
        "metrics": metrics,
        "paper": PAPER,
        "meets_paper_ndcg@10": metrics["test/ndcg@10"] >= PAPER["test/ndcg@10"],
        "epochs_run": len(curve),
        "best_epoch": curve.index(max(curve)) + 1 if curve else None,
        "val_ndcg@10_per_epoch": curve,
        "training_capped_minutes": max_minutes if max_minutes > 0 else None,
        "stopped_by": "max_epochs" if len(curve) >= cfg.trainer.max_epochs else "early stopping or time cap",
        "torch_threads": torch.get_num_threads(),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "run_dir": str(run_dir),
        "wall_time_s": metrics["time/total_s"],
        "load_avg_1m_at_record": round(os.getloadavg()[0], 2),
    }
    if note:
        payload["note"] = note
    return write_result(f"sasrec_beauty_{loss}", payload)


def time_steps(batch_size: int, group_rows: int, batches: int, loss: str) -> list[float]:
    """Seconds per training step over the first ``batches`` training batches (same batches for every setting)."""
    from zoo.data import SequentialDataModule
    from zoo.models.sasrec import SASRec
    from zoo.modules.sequence_encoder import SequenceEncoder

    cfg = compose(RECIPES[loss], [f"data.batch_size={batch_size}", "seed=0"])
    torch.manual_seed(0)
    datamodule = SequentialDataModule(cfg.data, seed=0)
    model = SASRec(cfg, datamodule)
    datamodule.connect(model.data_spec())
    model.prepare(datamodule)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = iter(datamodule.train_dataloader())
    steps = [next(loader) for _ in range(batches)]
    SequenceEncoder.GROUP_ROWS, default_rows = group_rows, SequenceEncoder.GROUP_ROWS
    seconds = []
    try:
        for batch in steps:
            tick = time.perf_counter()
            value = model.compute_loss(batch)
            optimizer.zero_grad()
            value.backward()
            optimizer.step()
            seconds.append(round(time.perf_counter() - tick, 4))
    finally:
        SequenceEncoder.GROUP_ROWS = default_rows
    return seconds


def speed(batches: int) -> Path:
    started = time.time()
    rows = []
    for loss in ("ce", "bce"):
        for batch_size in (64, 256):
            for label, group_rows in (("one group (crop to the batch's longest row)", 1 << 30), ("groups of 32", 32)):
                seconds = time_steps(batch_size, group_rows, batches, loss)
                rows.append(
                    {
                        "loss": loss,
                        "batch_size": batch_size,
                        "encoder": label,
                        "step_s": seconds,
                        "median_step_s": sorted(seconds)[len(seconds) // 2],
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    payload = {
        "what": "SASRec training step time on Beauty (forward + backward + Adam), length grouping off vs on",
        "torch_threads": torch.get_num_threads(),
        "rows": rows,
        "load_avg_1m_at_start": round(os.getloadavg()[0], 2),
        "note": "shared 2-core machine: compare rows of this file only (same batches, same load period)",
    }
    return write_result("sasrec_beauty_speed", payload, started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--losses", nargs="+", choices=sorted(RECIPES), default=["ce", "bce"])
    parser.add_argument("--max-minutes", type=float, default=0, help="cap on training time per run (0 = none)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--run-root", type=Path, default=Path("runs") / "benchmarks")
    parser.add_argument("--record", type=Path, default=None, help="only record a finished run directory (one loss)")
    parser.add_argument("--note", default="", help="with --record: a note kept in the result")
    parser.add_argument("--speed", action="store_true", help="time training steps instead (length grouping off/on)")
    parser.add_argument("--speed-batches", type=int, default=5)
    parser.add_argument("overrides", nargs="*", help="extra dotted.key=value overrides for both recipes")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("ZOO_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "datasets"))
    if args.speed:
        print(f"wrote {speed(args.speed_batches)}", flush=True)
        return
    if args.record is not None:
        print(f"wrote {record(args.losses[0], args.record, args.max_minutes, args.note)}", flush=True)
        return
    for loss in args.losses:
        print(f"wrote {run_one(loss, args.max_minutes, args.seed, args.run_root, args.overrides)}", flush=True)


if __name__ == "__main__":
    main()
