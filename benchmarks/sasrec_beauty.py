"""SASRec on Amazon Beauty (S3-Rec preprocessing, leave-one-out, full ranking) with both literature losses.

``ce`` (recipe ``sasrec_beauty``: full softmax cross-entropy) and ``bce`` (recipe ``sasrec_bce_beauty``: one
sampled negative per position, the S3-Rec setting behind the SASRec row of the TIGER table, NDCG@10 0.0318).
Each run writes ``benchmarks/results/sasrec_beauty_<loss>.json`` in the per-run format of
``benchmarks.common.write_result``: test metrics, the paper's numbers beside them, the resolved config, epochs run,
the validation curve, wall time, hardware (with load average) and peak memory.

The machine is shared, so training can be capped in wall time (``max_minutes``; the run then reports the best
checkpoint reached and says it was capped). The data root is ``$ZOO_DATA_DIR`` (see the README's Datasets
section).

    nohup python -m benchmarks.sasrec_beauty [losses=ce,bce] [max_minutes=0] [seed=42] [threads=0]
        [run_root=runs/benchmarks] [suffix=] [dotted.key=value ...] > /tmp/beauty.log 2>&1 &

``suffix=_lr3e-3`` writes ``sasrec_beauty_<loss>_lr3e-3.json`` instead (a variant beside the recipe's run; the
dotted overrides are recorded in the result).

``record=RUN_DIR [note=TEXT]`` only records a finished run directory (of the first of ``losses``). ``speed=true``
instead times training steps (forward, backward, Adam) on ``speed_batches`` Beauty batches with the encoder's
length grouping off and on, and writes ``sasrec_beauty_speed.json``. Dotted arguments are config overrides of
both recipes.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from benchmarks.common import cli, flag, integer, key_values, names, number, write_result
from zoo.config import compose
from zoo.errors import ConfigError
from zoo.run import claim_run_dir, run

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


def run_one(loss: str, max_minutes: float, seed: int, run_root: Path, extra: list[str], suffix: str = "") -> Path:
    """Train and test one recipe, then record it."""
    overrides = [f"seed={seed}", "trainer.enable_progress_bar=false", *extra]
    if max_minutes > 0:
        minutes = int(max_minutes)
        overrides.append(f"trainer.max_time=00:{minutes // 60:02d}:{minutes % 60:02d}:00")
    run_dir = claim_run_dir(run_root / RECIPES[loss])
    cfg = compose(RECIPES[loss], [*overrides, f"run_dir={run_dir}"])
    run(cfg)
    return record(loss, run_dir, max_minutes, overrides=extra, suffix=suffix)


def record(
    loss: str, run_dir: Path, max_minutes: float, note: str = "", overrides: list[str] = (), suffix: str = ""
) -> Path:
    """Write ``sasrec_beauty_<loss>.json`` from a finished run directory (config.yaml, metrics.json, CSV log)."""
    cfg = OmegaConf.load(run_dir / "config.yaml")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    curve = validation_curve(run_dir)
    payload = {
        "method": "sasrec",
        "dataset": "beauty",
        "loss": loss,
        "recipe": RECIPES[loss],
        "command": " ".join(
            [f"python -m benchmarks.sasrec_beauty losses={loss} max_minutes={max_minutes:g}"]
            + ([f"suffix={suffix}"] if suffix else [])
            + list(overrides)
        ),
        "overrides": list(overrides),
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
    return write_result(f"sasrec_beauty_{loss}{suffix}", payload)


def time_steps(batch_size: int, group_rows: int, batches: int, loss: str) -> list[float]:
    """Seconds per training step over the first ``batches`` training batches (same batches for every setting)."""
    from zoo.build import build
    from zoo.modules.sequence_encoder import SequenceEncoder

    cfg = compose(RECIPES[loss], [f"data.batch_size={batch_size}", "seed=0"])
    torch.manual_seed(0)
    model, datamodule = build(cfg)
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


def main(argv: list[str] | None = None) -> int:
    return cli(_main, __doc__, argv)


def _main(argv: list[str]) -> None:
    extra: list[str] = []
    args = key_values(
        argv,
        {
            "losses": "ce,bce",
            "max_minutes": 0,  # cap on training time per run (0 = none)
            "seed": 42,
            "threads": 0,  # torch threads (0 = torch's default)
            "run_root": Path("runs") / "benchmarks",
            "record": "",  # only record a finished run directory (one loss)
            "note": "",  # with record: a note kept in the result
            "speed": False,  # time training steps instead (length grouping off/on)
            "speed_batches": 5,
            "suffix": "",  # result name sasrec_beauty_<loss><suffix>
        },
        overrides=extra,
    )
    losses = names(args, "losses", choices=sorted(RECIPES))
    max_minutes, seed = number(args, "max_minutes", minimum=0), integer(args, "seed")
    threads, speed_batches = integer(args, "threads", minimum=0), integer(args, "speed_batches", minimum=1)
    if not losses:
        raise ConfigError(f"losses: give at least one of {', '.join(sorted(RECIPES))}")
    if threads:
        torch.set_num_threads(threads)
    os.environ.setdefault("ZOO_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "datasets"))
    if flag(args, "speed"):
        print(f"wrote {speed(speed_batches)}", flush=True)
        return
    suffix = str(args["suffix"])
    if suffix and not all(c.isalnum() or c in "_-." for c in suffix):
        raise ConfigError(f"suffix: letters, digits, '_', '-' and '.' only, got {suffix!r}")
    if args["record"]:
        path = record(losses[0], Path(args["record"]), max_minutes, args["note"], suffix=suffix)
        print(f"wrote {path}", flush=True)
        return
    for loss in losses:
        print(f"wrote {run_one(loss, max_minutes, seed, Path(args['run_root']), extra, suffix)}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
