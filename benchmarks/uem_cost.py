"""UEM's cost against the text-history prompt as the history grows (issue 19): on MovieLens-100K with the tiny LM,
for histories of 10 / 50 / 200 items, ``uem_ml100k`` (K soft prompts) and ``llmrec_ml100k`` (every history title
in the prompt, ``model.max_prompt_tokens`` large enough to keep them all) are each trained for the same wall time
(``train_s``) from the same seed, then tested on the first ``test_users`` users (full ranking, the shared protocol,
title-constrained beam search). Per cell:

* ``step_s`` / ``step_cpu_s``: median wall / process CPU time of a training step (forward, loss, backward, AdamW),
  batch ``batch``; on a shared machine the CPU time is the steadier of the two (one thread);
* ``prompt_tokens``: mean prompt length per training example (instruction + history, soft prompts counted as
  tokens; training examples are every prefix, so short histories count too) and its maximum;
* ``peak_rss_mb`` / ``train_extra_mb``: the cell process's peak resident memory, and its growth during training
  over the built model (each cell runs in its own process, so peaks do not mix);
* ``test/ndcg@10``, ``test/recall@10`` on the slice and the number of steps the time allowed.

The paper's claim: UEM's cost grows with K, not with the history length. Run at one thread:

    python -m benchmarks.uem_cost [histories=10,50,200] [train_s=30] [batch=8] [test_users=96] [threads=1]

Writes ``benchmarks/results/<name>.json`` (default ``uem_cost``).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

from benchmarks.common import cli, integer, integers, key_values, number, write_result
from zoo.models.uem import PAPER_MODULE

ARMS = {"uem": "uem_ml100k", "text": "llmrec_ml100k"}
ARM_OVERRIDES = {"uem": PAPER_MODULE, "text": ()}  # UEM as the paper has it: K soft prompts
DOC = __doc__


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cell(arm: str, history: int, train_s: float, batch: int, test_users: int, seed: int) -> dict:
    """One (arm, history length) cell, in this process."""
    import lightning as L

    from zoo.build import build
    from zoo.config import compose

    overrides = [
        f"data.max_len={history}",
        f"data.batch_size={batch}",
        "data.eval_batch_size=16",
        "data.num_workers=0",
        "model.max_prompt_tokens=4096",
        f"seed={seed}",
        "logger.name=none",
    ]
    L.seed_everything(seed, verbose=False)
    cfg = compose(ARMS[arm], [*ARM_OVERRIDES[arm], *overrides])
    model, datamodule = build(cfg)
    built_mb = rss_mb()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=float(cfg.optim.lr))
    model.train()
    times, cpu_times, tokens, steps = [], [], [], 0
    started = time.perf_counter()
    for batch_ in datamodule.train_dataloader():
        t0, c0 = time.perf_counter(), time.process_time()
        loss = model.compute_loss(batch_)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
        tokens.extend(batch_["prompt_mask"].sum(1).tolist())
        steps += 1
        if time.perf_counter() - started >= train_s:
            break
    trained_mb = rss_mb()
    model.eval()
    evaluator = model.test_metrics
    evaluator.reset()
    seen, eval_started = 0, time.perf_counter()
    with torch.no_grad():
        for batch_ in datamodule.test_dataloader():
            evaluator.update(model, batch_)
            seen += len(batch_["target"])
            if seen >= test_users:
                break
    metrics = {k: float(v) for k, v in evaluator.compute().items()}
    return {
        "arm": arm,
        "recipe": ARMS[arm],
        "history": history,
        "steps": steps,
        "step_s": round(statistics.median(times[2:] or times), 4),
        "step_cpu_s": round(statistics.median(cpu_times[2:] or cpu_times), 4),
        "prompt_tokens": round(sum(tokens) / len(tokens), 1),
        "prompt_tokens_max": max(tokens),
        "loss_last": round(loss.item(), 4),
        "peak_rss_mb": round(max(trained_mb, rss_mb()), 1),
        "train_extra_mb": round(trained_mb - built_mb, 1),
        "test_users": seen,
        "test_s_per_user": round((time.perf_counter() - eval_started) / max(seen, 1), 4),
        "test/ndcg@10": metrics.get("ndcg@10"),
        "test/recall@10": metrics.get("recall@10"),
        "trainable_params": sum(p.numel() for p in params),
    }


def body(argv: list[str]) -> None:
    settings = key_values(
        argv,
        {
            "histories": "10,50,200",
            "train_s": "30",
            "batch": "8",
            "test_users": "96",
            "threads": "1",
            "seed": "42",
            "name": "uem_cost",
            "_cell": "",
        },
    )
    threads = integer(settings, "threads", 1)
    torch.set_num_threads(threads)
    train_s, batch = number(settings, "train_s", 1), integer(settings, "batch", 1)
    test_users, seed = integer(settings, "test_users", 1), integer(settings, "seed")
    if settings["_cell"]:
        arm, history = settings["_cell"].split(":")
        print(json.dumps(cell(arm, int(history), train_s, batch, test_users, seed)))
        return
    started = time.time()
    rows = []
    for history in integers(settings, "histories", 1):
        for arm in ARMS:
            args = [f"{k}={v}" for k, v in settings.items() if not k.startswith("_") and k != "histories"]
            out = subprocess.run(
                [sys.executable, "-m", "benchmarks.uem_cost", *args, f"_cell={arm}:{history}"],
                capture_output=True,
                text=True,
                env={**os.environ, "OMP_NUM_THREADS": str(threads)},
            )
            if out.returncode != 0:
                raise RuntimeError(f"cell {arm}:{history} failed:\n{out.stderr[-3000:]}")
            row = json.loads(out.stdout.strip().splitlines()[-1])
            print(json.dumps(row), flush=True)
            rows.append(row)
    by = {(r["arm"], r["history"]): r for r in rows}
    histories = sorted({r["history"] for r in rows})
    growth = {
        arm: {
            key: round(by[(arm, histories[-1])][key] / by[(arm, histories[0])][key], 2)
            for key in ("step_s", "step_cpu_s", "prompt_tokens")
        }
        for arm in ARMS
    }
    write_result(
        settings["name"],
        {
            "what": "UEM (K soft prompts) vs the text-history prompt (llmrec) as the history grows, tiny LM, ml100k",
            "settings": {
                "train_s": train_s,
                "batch": batch,
                "test_users": test_users,
                "threads": threads,
                "seed": seed,
                "backbone": "tiny-llama (2 layers, hidden 64, from scratch)",
                "uem": "8 resampling queries, module d=128, 2 layers; all-MiniLM-L6-v2 item vectors (title, genres)",
                "text": "llmrec: every history title in the prompt (max_prompt_tokens=4096)",
                "protocol": "full ranking, title-constrained beam search (10 beams), first test_users users",
            },
            "cells": rows,
            f"growth_{histories[0]}_to_{histories[-1]}": growth,
            "paper_claim": "UEM's cost grows with K, not with the history length (arXiv 2401.04858, abstract)",
            "note": "equal wall-clock training per cell (not equal steps); quality after seconds of training is a "
            "smoke signal, not a leaderboard number",
        },
        started,
    )


if __name__ == "__main__":
    sys.exit(cli(body, DOC))
