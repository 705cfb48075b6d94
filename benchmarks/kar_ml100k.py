"""KAR on MovieLens-100K: every backbone (DIN, DeepFM, DCNv2, AutoInt) alone and with KAR's knowledge (reasoning
only, fact only, both: the paper's "1 + 1 > 2"), 3 seeds each; test AUC / LogLoss / GAUC of the checkpoint chosen
on val/auc, mean and spread per cell, and KAR's AUC gain over the backbone against the seed spread.

The knowledge (``kar_knowledge`` + ``kar_vectors`` stages) is generated once and reused by every KAR cell (the
same cache key); on a 2-core CPU the generation alone is ~2 h with smollm2-135m (``kar_generation_cost.json``).

    python -m benchmarks.kar_ml100k [seeds=0,1,2] [backbones=din,deepfm,dcnv2,autoint] [threads=1]
        [max_time=00:00:10:00] [dry_run=true] [out=benchmarks/results/kar_ml100k.json] [key=value ...]

``dry_run=true`` prints the grid and runs nothing; other ``key=value`` pairs are recipe overrides for every cell.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
BACKBONES = ("din", "deepfm", "dcnv2", "autoint")
VARIANTS = {"none": None, "reasoning": "reasoning", "fact": "fact", "both": "both"}
OWN = ("seeds", "backbones", "threads", "max_time", "dry_run", "out")


def cells(backbones, seeds):
    for backbone in backbones:
        for variant, towers in VARIANTS.items():
            recipe = f"{backbone}_ml100k" if towers is None else f"kar_{backbone}_ml100k"
            extra = [] if towers is None else [f"model.kar_towers={towers}"]
            for seed in seeds:
                yield backbone, variant, seed, recipe, [f"seed={seed}", *extra]


def summary(values: list[float]) -> dict:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "values": values,
    }


def main(argv: list[str]) -> int:
    options = dict(a.split("=", 1) for a in argv)
    seeds = [int(s) for s in options.get("seeds", "0,1,2").split(",")]
    backbones = options.get("backbones", ",".join(BACKBONES)).split(",")
    overrides = [f"{k}={v}" for k, v in options.items() if k not in OWN]
    overrides += [f"trainer.max_time={options.get('max_time', '00:00:10:00')}", "trainer.enable_progress_bar=false"]
    grid = list(cells(backbones, seeds))
    if options.get("dry_run", "false").lower() == "true":
        for backbone, variant, seed, recipe, extra in grid:
            print(f"{backbone:8s} {variant:9s} seed {seed}: {recipe} {' '.join(extra + overrides)}")
        return 0
    import torch

    from zoo.config import compose
    from zoo.io import write_json_atomic
    from zoo.run import run

    torch.set_num_threads(int(options.get("threads", 1)))
    out = Path(options.get("out", RESULTS / "kar_ml100k.json"))
    runs = []
    for backbone, variant, seed, recipe, extra in grid:
        started = time.monotonic()
        metrics = run(compose(recipe, [*extra, *overrides]))
        runs.append(
            {
                "backbone": backbone,
                "variant": variant,
                "seed": seed,
                "recipe": recipe,
                "seconds": round(time.monotonic() - started, 1),
                **{k: float(v) for k, v in metrics.items() if k.startswith(("test/", "best/"))},
            }
        )
        table: dict = {}
        for b in backbones:
            for v in VARIANTS:
                rows = [r for r in runs if r["backbone"] == b and r["variant"] == v]
                if rows:
                    table.setdefault(b, {})[v] = {
                        m: summary([r[f"test/{m}"] for r in rows if f"test/{m}" in r])
                        for m in ("auc", "logloss", "gauc")
                    }
            cell = table.get(b, {})
            if "none" in cell and "both" in cell:  # the gain and whether it clears both spreads
                gain = cell["both"]["auc"]["mean"] - cell["none"]["auc"]["mean"]
                spread = max(cell["both"]["auc"]["std"], cell["none"]["auc"]["std"])
                cell["kar_auc_gain"] = {"abs": gain, "beyond_spread": gain > spread}
        write_json_atomic(
            out, {"dataset": "ml100k", "seeds": seeds, "overrides": overrides, "cells": table, "runs": runs}
        )  # after every run: a killed grid keeps what it finished
    print(f"{len(runs)} runs -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
