"""KAR on MovieLens-100K: every backbone (DIN, DeepFM, DCNv2, AutoInt) alone and with KAR's knowledge (reasoning
only, fact only, both: the paper's "1 + 1 > 2"), 3 seeds each; test AUC / LogLoss / GAUC of the checkpoint chosen
on val/auc, mean and spread per cell, and each variant's AUC gain over the backbone against the seed spread.

The knowledge (``kar_knowledge`` + ``kar_vectors`` stages) is generated once and reused by every KAR cell (the
same cache key); on a 2-core CPU the generation alone is ~2 h with smollm2-135m (``kar_generation_cost.json``).
``texts=`` names a folder of texts generated earlier with the same settings (default ``benchmarks/knowledge``,
which holds this repository's smollm2-135m generation for ml100k: the stage takes them instead of generating;
``texts=none`` generates everything).

A subset of the grid (``variants=none``: the backbones alone, which need no knowledge) can run first; a later run
with more of the grid adds to the same result. Resumable: every finished run is written at once (``complete:
false`` and ``missing`` while any of the whole benchmark is left); a re-run with the same settings runs only the
missing (backbone, variant, seed) runs, other settings are refused in one line
(``fresh=true`` starts over).

    python -m benchmarks.kar_ml100k [seeds=0,1,2] [backbones=din,deepfm,dcnv2,autoint]
        [variants=none,reasoning,fact,both] [threads=1]
        [max_time=00:00:10:00] [texts=benchmarks/knowledge|none] [dry_run=true] [fresh=true]
        [name=kar_ml100k] [key.path=value ...]

``dry_run=true`` prints the grid and runs nothing; dotted ``key=value`` pairs are recipe overrides for every cell.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
KNOWLEDGE = BENCH / "knowledge"
BACKBONES = ("din", "deepfm", "dcnv2", "autoint")
VARIANTS = {"none": None, "reasoning": "reasoning", "fact": "fact", "both": "both"}
METRICS = ("auc", "logloss", "gauc")


def cells(backbones, seeds, texts: str | None = None, variants=tuple(VARIANTS)):
    for backbone in backbones:
        for variant, towers in VARIANTS.items():
            if variant not in variants:
                continue
            recipe = f"{backbone}_ml100k" if towers is None else f"kar_{backbone}_ml100k"
            extra = [] if towers is None else [f"model.kar_towers={towers}"]
            if towers is not None and texts:
                extra.append(f"model.kar_texts_dir={texts}")
            for seed in seeds:
                yield backbone, variant, seed, recipe, [f"seed={seed}", *extra]


def summary(values: list[float]) -> dict:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "values": values,
    }


def table(runs: list[dict], backbones: list[str]) -> dict:
    """backbone -> variant -> metric summaries, and each KAR variant's AUC gain over the backbone alone, beyond
    the larger of the two seed spreads or not."""
    out: dict = {}
    for b in backbones:
        cell: dict = {}
        for v in VARIANTS:
            rows = [r for r in runs if r["backbone"] == b and r["variant"] == v]
            if rows:
                cell[v] = {m: summary([r[f"test/{m}"] for r in rows if f"test/{m}" in r]) for m in METRICS}
        for v in ("reasoning", "fact", "both"):
            if "none" in cell and v in cell:
                gain = cell[v]["auc"]["mean"] - cell["none"]["auc"]["mean"]
                spread = max(cell[v]["auc"]["std"], cell["none"]["auc"]["std"])
                cell[f"{v}_auc_gain"] = {
                    "abs": gain,
                    "relative": gain / cell["none"]["auc"]["mean"],
                    "spread": spread,
                    "beyond_spread": gain > spread,
                }
        if all(f"{v}_auc_gain" in cell for v in ("reasoning", "fact", "both")):  # the paper's "1 + 1 > 2"
            parts = cell["reasoning_auc_gain"]["abs"] + cell["fact_auc_gain"]["abs"]
            cell["both_exceeds_sum_of_parts"] = cell["both_auc_gain"]["abs"] > parts
        if cell:
            out[b] = cell
    return out


def run_key(run: dict) -> tuple:
    return run["backbone"], run["variant"], int(run["seed"])


def merged(stored: list[dict], ours: list[dict]) -> list[dict]:
    """The union of two lists of runs (ours win on the same key), in the grid's order."""
    by_key = {run_key(r): r for r in [*stored, *ours]}
    order = {key: i for i, key in enumerate((b, v, s) for b in BACKBONES for v in VARIANTS for s in range(1000))}
    return sorted(by_key.values(), key=lambda r: order.get(run_key(r), len(order)))


def run_cell(recipe: str, overrides: list[str]) -> dict:
    """One training run of ``recipe`` with ``overrides``: its final metrics."""
    from zoo.config import compose
    from zoo.run import run

    return run(compose(recipe, overrides))


def main(argv: list[str]) -> None:
    from benchmarks import common
    from benchmarks.common import flag, hardware, integer, integers, key_values, locked, names, resumable_result
    from zoo.errors import ConfigError

    overrides: list[str] = []
    values = key_values(
        argv,
        {
            "seeds": "0,1,2",
            "backbones": ",".join(BACKBONES),
            "variants": ",".join(VARIANTS),
            "threads": 1,
            "max_time": "00:00:10:00",
            "texts": str(KNOWLEDGE),
            "dry_run": "false",
            "fresh": "false",
            "name": "kar_ml100k",
        },
        overrides,
    )
    seeds, backbones = integers(values, "seeds", minimum=0), names(values, "backbones", choices=list(BACKBONES))
    variants, threads = names(values, "variants", choices=list(VARIANTS)), integer(values, "threads", minimum=1)
    texts = None if str(values["texts"]).lower() == "none" else str(values["texts"])
    if texts is not None and not Path(texts).is_dir():
        raise ConfigError(f"texts={texts}: no such folder (texts=none generates the knowledge)")
    overrides += [f"trainer.max_time={values['max_time']}", "trainer.enable_progress_bar=false"]
    grid = list(cells(backbones, seeds, texts, variants))
    if flag(values, "dry_run"):
        for backbone, variant, seed, recipe, extra in grid:
            print(f"{backbone:8s} {variant:9s} seed {seed}: {recipe} {' '.join(extra + overrides)}")
        return
    import torch

    from zoo.io import write_json_atomic

    torch.set_num_threads(threads)
    path = common.RESULTS_DIR / f"{values['name']}.json"
    settings = {"overrides": overrides, "texts": "none" if texts is None else Path(texts).name}
    stored = resumable_result(path, settings, flag(values, "fresh"), key="settings")
    runs: list[dict] = list(stored["runs"]) if stored else []
    done = {run_key(r) for r in runs}
    load, merge = os.getloadavg()[0], not flag(values, "fresh")
    for backbone, variant, seed, recipe, extra in grid:
        if (backbone, variant, seed) in done:
            print(f"{backbone} {variant} seed {seed}: already in {path.name}, skipped", flush=True)
            continue
        started, load_at_start = time.monotonic(), os.getloadavg()[0]
        metrics = run_cell(recipe, [*extra, *overrides])
        runs.append(
            {
                "backbone": backbone,
                "variant": variant,
                "seed": seed,
                "recipe": recipe,
                "seconds": round(time.monotonic() - started, 1),
                "load_avg_1m_at_start": round(load_at_start, 2),
                **{k: float(v) for k, v in metrics.items() if k.startswith(("test/", "best/", "stage/"))},
            }
        )
        done.add((backbone, variant, seed))
        with locked(path):  # another call on other backbones may have written runs since: keep them
            if merge:
                latest = resumable_result(path, settings, key="settings")
                runs = merged(latest["runs"] if latest else [], runs)
            merge = True  # fresh=true: the first write replaces the old file, later ones merge
            done = {run_key(r) for r in runs}
            # complete = the whole benchmark (every backbone and variant for these seeds), not this call's subset
            missing = [f"{b} {v} seed {s}" for b, v, s, _, _ in cells(BACKBONES, seeds) if (b, v, s) not in done]
            write_json_atomic(  # after every run: a killed grid keeps what it finished and resumes from it
                path,
                {
                    "dataset": "ml100k",
                    "settings": settings,
                    "seeds": seeds,
                    "complete": not missing,
                    "missing": missing,
                    "threads": threads,
                    "hardware": hardware(),
                    "load_avg_1m_at_start": round(load, 2),
                    "cells": table(runs, [b for b in BACKBONES if any(r["backbone"] == b for r in runs)]),
                    "runs": runs,
                },
            )
        print(f"{backbone} {variant} seed {seed}: AUC {metrics.get('test/auc', float('nan')):.4f}", flush=True)
    print(f"{len(runs)} runs -> {path}")


if __name__ == "__main__":
    from benchmarks.common import cli

    sys.exit(cli(main, __doc__))
