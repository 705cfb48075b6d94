"""Where the zoo's SASRec loses to a converged RecBole on MovieLens-100K (issue #21): one factor at a time.

Every arm is the recipe ``sasrec_ml100k`` trained by ``benchmarks.peers.recbole_sasrec.run_zoo`` (the peer
benchmark's zoo side: same split, network, full-softmax CE, full ranking, early stopping on validation NDCG@10),
with one group of overrides changed against the ``base`` arm, for the same seeds. Every arm first pins the recipe
as it stood when the arms ran (``BASE_OVERRIDES``: lr 1e-3), so the recipe taking the winner (lr 3e-3, 16 users a
step) leaves the arms and their stored runs as they were:

* ``base``: the peer benchmark's zoo side as it was (lr 1e-3, sequence rows, windows of 50 over the last 300
  items, 6 users a step);
* ``prefix_rows``: RecBole's rows, one example per (user, prefix), 256 a step (~380 steps an epoch);
* ``batch_32`` / ``batch_128``: more users a step, so fewer optimizer steps an epoch;
* ``dropout_0.2``: RecBole's and the recipe's 0.5 hidden / attention dropout lowered;
* ``lr_3e-3``, ``lr_5e-3``, ``cosine``: learning rate and schedule (cosine decay with 200 warmup steps over the
  epoch budget);
* ``lr_3e-3_batch_16``: a second stage, the one factor that won (lr 3e-3) with 16 users a step;
* ``kar_items``: not a training factor but side information (issue #17's sequential KAR variant): the model
  ``sasrec_kar``, KAR's SmolLM2 item facts (``benchmarks/knowledge``) through MiniLM and an MLP adaptor added to
  the item embedding, everything else the ``base`` arm's;
* model-selection noise is read from the runs themselves: per arm, the spread of test NDCG@10 over seeds, and the
  gap between the best validation and the test NDCG@10 (943 validation users: one hit is 0.1% of recall).

Resumable at (arm, seed) granularity, as the peer benchmark: each finished run is written to the result at once,
a re-run with the same settings does only the missing ones (``fresh=true`` starts over). A run takes up to
``max_minutes`` (default 8) at one thread, so the 8 arms x 3 seeds take up to about 3 hours:

    nohup python -m benchmarks.sasrec_factors [arms=base,prefix_rows,...] [seeds=0,1,2] [max_minutes=8]
        [threads=1] [name=sasrec_factors_ml100k] [fresh=false] > /tmp/factors.log 2>&1 &

Writes ``benchmarks/results/<name>.json``: per arm the overrides, the runs (per-epoch validation curve, best epoch,
time to best, test Recall/NDCG@10) and mean / std over seeds, and each arm's difference to ``base``.
"""

from __future__ import annotations

import json
import os
import statistics
import time

from benchmarks.peers.recbole_sasrec import run_zoo

# (overrides, users or rows a step) per arm; patience is in validations (an epoch of 6 users is 4 steps: 20)
ARMS: dict[str, dict] = {
    "base": {"overrides": [], "batch_size": 6, "patience": 20},
    "prefix_rows": {"overrides": ["model.train_rows=prefix", "data.train_len=0"], "batch_size": 256, "patience": 10},
    "batch_32": {"overrides": [], "batch_size": 32, "patience": 20},
    "batch_128": {"overrides": [], "batch_size": 128, "patience": 40},
    "dropout_0.2": {"overrides": ["model.dropout=0.2", "model.attn_dropout=0.2"], "batch_size": 6, "patience": 20},
    "lr_3e-3": {"overrides": ["optim.lr=0.003"], "batch_size": 6, "patience": 20},
    "lr_5e-3": {"overrides": ["optim.lr=0.005"], "batch_size": 6, "patience": 20},
    # a second stage: the winning factor (lr 3e-3) combined with another
    "lr_3e-3_batch_16": {"overrides": ["optim.lr=0.003"], "batch_size": 16, "patience": 20},
    "cosine": {"overrides": ["optim.scheduler=cosine", "optim.warmup_steps=200"], "batch_size": 6, "patience": 20},
    "kar_items": {
        "overrides": ["model.name=sasrec_kar", "model.kar_domain=movies", "model.kar_texts_dir=benchmarks/knowledge"],
        "batch_size": 6,
        "patience": 20,
    },
}
MAX_EPOCHS = 300
# the recipe as it stood when the arms ran (see the module docstring); each arm's own overrides come after it
BASE_OVERRIDES = ("optim.lr=0.001",)


def main(argv: list[str] | None = None) -> int:
    from benchmarks.common import cli

    return cli(_main, __doc__, argv)


def _main(argv: list[str]) -> None:
    import torch

    from benchmarks.common import (
        RESULTS_DIR,
        flag,
        integer,
        integers,
        key_values,
        names,
        resumable_result,
        write_result,
    )

    values = key_values(
        argv,
        {
            "arms": ",".join(ARMS),
            "seeds": "0,1,2",
            "max_minutes": 8,
            "threads": 1,
            "name": "sasrec_factors_ml100k",
            "fresh": "false",
        },
    )
    arms, seeds = names(values, "arms", choices=list(ARMS)), integers(values, "seeds", minimum=0)
    max_minutes, threads = integer(values, "max_minutes", minimum=1), integer(values, "threads", minimum=1)
    name = str(values["name"])
    torch.set_num_threads(threads)
    path = RESULTS_DIR / f"{name}.json"
    settings = {"max_minutes": max_minutes, "threads": threads, "max_epochs": MAX_EPOCHS}
    done: dict[str, dict[int, dict]] = {arm: {} for arm in ARMS}
    elapsed = 0.0
    stored = resumable_result(path, settings, flag(values, "fresh"), key="settings")
    if stored is not None:
        for arm, entry in stored["arms"].items():
            if entry["overrides"] == ARMS.get(arm, {}).get("overrides"):
                done[arm] = {int(r["seed"]): r for r in entry["runs"]}
        elapsed = float(stored.get("wall_time_s", 0.0))
    started, load = time.time() - elapsed, os.getloadavg()[0]
    for arm in arms:
        for seed in seeds:
            if seed in done[arm]:
                print(f"{arm} seed {seed}: already in {path.name}, skipped", flush=True)
                continue
            spec = ARMS[arm]
            run = run_zoo(
                seed,
                MAX_EPOCHS,
                spec["patience"],
                max_minutes,
                spec["batch_size"],
                BASE_OVERRIDES + tuple(spec["overrides"]),
            )
            done[arm][seed] = run
            print(arm, json.dumps(run), flush=True)
            payload = build_payload(done, arms, seeds, settings, load)
            path = write_result(name, payload, started, RESULTS_DIR)
    print(f"wrote {path}")


def summary(runs: list[dict]) -> dict:
    out: dict = {"runs": len(runs)}
    for key in ("test_ndcg@10", "test_recall@10", "best_val_ndcg@10", "time_to_best_val_s", "best_epoch"):
        vals = [r[key] for r in runs]
        out[key] = {"mean": statistics.mean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0}
    gaps = [r["best_val_ndcg@10"] - r["test_ndcg@10"] for r in runs]
    out["val_minus_test_ndcg@10"] = {"mean": statistics.mean(gaps), "max": max(gaps)}
    return out


def build_payload(done: dict, arms: list[str], seeds: list[int], settings: dict, load: float) -> dict:
    entries = {}
    for arm in ARMS:
        runs = [done[arm][s] for s in sorted(done[arm])]
        if not runs:
            continue
        spec = ARMS[arm]
        entries[arm] = {"overrides": spec["overrides"], "batch_size": spec["batch_size"], "patience": spec["patience"]}
        entries[arm].update(summary=summary(runs), runs=runs)
    base = entries.get("base", {}).get("summary")
    for arm, entry in entries.items():
        if base and arm != "base":
            mean = entry["summary"]["test_ndcg@10"]["mean"]
            entry["test_ndcg@10_vs_base"] = round(
                (mean - base["test_ndcg@10"]["mean"]) / base["test_ndcg@10"]["mean"], 4
            )
    missing = {arm: [s for s in seeds if s not in done[arm]] for arm in arms}
    return {
        "dataset": "ml100k",
        "recipe": "sasrec_ml100k",
        "settings": settings,
        "base_overrides": list(BASE_OVERRIDES),
        "seeds": seeds,
        "complete": not any(missing.values()),
        "missing": {arm: m for arm, m in missing.items() if m},
        "arms": entries,
        "load_avg_1m_at_start": round(load, 2),
        "note": "one factor at a time against `base`; 2-core machine shared with other jobs: timings are noisy.",
    }


if __name__ == "__main__":
    raise SystemExit(main())
