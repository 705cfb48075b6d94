"""MSL vs LML on the MSL paper's Amazon Books setting, at CPU scale: ``msl_books_lml``, ``msl_books_msl`` and
``msl_books_msl_ats`` trained with the same budget, seed and data, then evaluated by title-trie-constrained beam
search (10 beams) with HR and NDCG @1/5/10 (exact item match).

What is scaled down, and says so in the JSON: the backbone is ``tiny-llama`` (2 layers, hidden 64, trained from
scratch with the bundled BERT WordPiece vocabulary) instead of Llama-3 + LoRA; training runs ``epochs`` epochs
over the paper's 10k sample (no validation: the release has none, and validating on test would select on test);
evaluation uses a seeded random subsample of ``eval_rows`` of the 4,383 test rows (the same rows for every
loss), written beside the training file into ``benchmarks/.cache/msl_books/``.

Step time is measured separately and fairly on a shared machine: one initial model (built by ``zoo.build``), the
same ``step_batches`` training batches, the three losses interleaved round by round (``step_rounds``), median over
rounds of the per-step time (wall and process CPU time); the target is MSL's step time at most 1.2x LML's.

    nohup python -m benchmarks.msl_books [epochs=3] [eval_rows=500] [seed=42] [threads=1] [step_batches=12]
        [step_rounds=3] [losses=lml,msl,msl_ats] [name=msl_books] > /tmp/msl_books.log 2>&1 &

The data is ``$ZOO_DATA_DIR/MSL/Amazon_Books`` (see the README's Datasets section). Writes
``benchmarks/results/<name>.json``.
"""

from __future__ import annotations

import copy
import csv
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import cli, cutoff_metrics, integer, key_values, names, write_result
from zoo.build import build
from zoo.config import compose
from zoo.errors import ConfigError
from zoo.io import atomic_path
from zoo.losses import build_loss
from zoo.run import claim_run_dir, run

RECIPES = {"lml": "msl_books_lml", "msl": "msl_books_msl", "msl_ats": "msl_books_msl_ats"}
CACHE = Path(__file__).resolve().parent / ".cache" / "msl_books"
PAPER = {
    "source": "Wang et al., SIGIR 2025 (MSL): Llama-3 8B + LoRA, 10 epochs on the 10k sample",
    "claim": "+42.24% NDCG@10 over LML on average over Toy, Book, Clothing, Office",
}


def eval_folder(source: Path, rows: int, seed: int) -> Path:
    """A dataset folder with the paper's training sample, the titles and a seeded subsample of the test rows."""
    folder = CACHE / f"Amazon_Books_test{rows}_seed{seed}"
    if (folder / "test.csv").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("id2name4Rec.json", "train_10000.csv"):
        with atomic_path(folder / name) as tmp:
            shutil.copyfile(source / name, tmp)
    lines = (source / "test.csv").read_text(encoding="utf-8").splitlines(keepends=True)
    header, body = lines[0], lines[1:]
    keep = np.sort(np.random.default_rng(seed).choice(len(body), size=min(rows, len(body)), replace=False))
    with atomic_path(folder / "test.csv") as tmp:
        tmp.write_text(header + "".join(body[i] for i in keep), encoding="utf-8")
    return folder


def step_times(folder: Path, batches: int, rounds: int, seed: int) -> dict[str, dict[str, float]]:
    """Median per-step time (forward + loss + backward + AdamW step) of each loss on identical batches."""
    cfg = compose(RECIPES["lml"], [f"data.path={folder}", f"seed={seed}"])
    torch.manual_seed(seed)
    model, datamodule = build(cfg)
    loader = iter(datamodule.train_dataloader())
    fixed = [next(loader) for _ in range(batches)]
    initial = copy.deepcopy(model.backbone.state_dict())
    losses = {}
    for name in RECIPES:
        loss = build_loss(compose(RECIPES[name], [f"data.path={folder}"]).loss)
        loss.connect(trie=model.titles.trie)
        losses[name] = loss
    walls: dict[str, list[float]] = {n: [] for n in RECIPES}
    cpus: dict[str, list[float]] = {n: [] for n in RECIPES}
    for _ in range(rounds):
        for name, loss in losses.items():
            model.backbone.load_state_dict(initial)
            model.loss = loss.train()
            model.train()
            optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.optim.lr)
            for i, batch in enumerate(fixed):
                wall, cpu = time.perf_counter(), time.process_time()
                optimizer.zero_grad()
                model.compute_loss(batch).backward()
                optimizer.step()
                if i > 0:  # the first step of a round warms allocator and caches
                    walls[name].append(time.perf_counter() - wall)
                    cpus[name].append(time.process_time() - cpu)
    return {
        n: {
            "wall_ms": round(1000 * statistics.median(walls[n]), 2),
            "cpu_ms": round(1000 * statistics.median(cpus[n]), 2),
        }
        for n in RECIPES
    }


def train_curve(run_dir: Path) -> dict[str, list[float]]:
    """train/loss (and train/tau) logged during the run, from its CSV log."""
    path = run_dir / "logs" / "csv" / "metrics.csv"
    curve: dict[str, list[float]] = {"train/loss": [], "train/tau": []}
    if path.is_file():
        with path.open() as f:
            for row in csv.DictReader(f):
                for key in curve:
                    if row.get(key):
                        curve[key].append(round(float(row[key]), 4))
    return {k: v for k, v in curve.items() if v}


def main(argv: list[str] | None = None) -> int:
    return cli(_main, __doc__, argv)


def _main(argv: list[str]) -> None:
    args = key_values(
        argv,
        {
            "epochs": 3,
            "eval_rows": 500,
            "seed": 42,
            "threads": 1,  # torch threads (the machine is shared)
            "step_batches": 12,
            "step_rounds": 3,
            "losses": ",".join(RECIPES),
            "name": "msl_books",
        },
    )
    epochs, eval_rows = integer(args, "epochs", minimum=1), integer(args, "eval_rows", minimum=1)
    seed, threads = integer(args, "seed"), integer(args, "threads", minimum=1)
    step_batches, step_rounds = integer(args, "step_batches", minimum=2), integer(args, "step_rounds", minimum=1)
    losses = names(args, "losses", choices=list(RECIPES))
    if not losses or not args["name"]:
        raise ConfigError("losses and name must not be empty")
    started = time.time()
    torch.set_num_threads(threads)
    os.environ.setdefault("ZOO_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "datasets"))
    source = Path(os.environ["ZOO_DATA_DIR"]) / "MSL" / "Amazon_Books"
    folder = eval_folder(source, eval_rows, seed=0)
    print(f"evaluation folder {folder}", flush=True)
    steps = step_times(folder, step_batches, step_rounds, seed)
    print("step times", steps, flush=True)
    results = {}
    for name in losses:
        overrides = [
            f"data.path={folder}",
            f"seed={seed}",
            f"trainer.max_epochs={epochs}",
            "trainer.enable_progress_bar=false",
            "trainer.log_every_n_steps=25",
        ]
        run_dir = claim_run_dir(CACHE / "runs" / RECIPES[name])
        cfg = compose(RECIPES[name], [*overrides, f"run_dir={run_dir}"])
        run_started = time.time()
        metrics = run(cfg)
        results[name] = {
            "recipe": RECIPES[name],
            "loss": dict(cfg.loss),
            "metrics": cutoff_metrics(metrics),
            "run_wall_s": round(time.time() - run_started, 1),
            "run_dir": str(run_dir),
            **train_curve(run_dir),
        }
        print(name, results[name]["metrics"], flush=True)
    lml = results.get("lml", {}).get("metrics", {})
    comparison = {}
    for name in ("msl", "msl_ats"):
        if name in results and lml:
            mine = results[name]["metrics"]
            comparison[name] = {
                "ndcg@10_vs_lml": round(mine["test/ndcg@10"] - lml["test/ndcg@10"], 5),
                "hr@10_vs_lml": round(mine["test/hr@10"] - lml["test/hr@10"], 5),
                "beats_lml_on_ndcg@10": mine["test/ndcg@10"] > lml["test/ndcg@10"],
                "step_time_ratio_wall": round(steps[name]["wall_ms"] / steps["lml"]["wall_ms"], 3),
                "step_time_ratio_cpu": round(steps[name]["cpu_ms"] / steps["lml"]["cpu_ms"], 3),
            }
    payload = {
        "setting": {
            "dataset": "MSL Amazon_Books (train_10000.csv, sliding windows of <= 10 history items)",
            "backbone": "tiny-llama: 2 layers, hidden 64, 4 heads, trained from scratch; BERT WordPiece vocab 30522",
            "epochs": epochs,
            "batch_size": 32,
            "optimizer": "adamw lr 1e-3",
            "seed": seed,
            "eval": f"{eval_rows} of 4383 test rows, seeded random subsample (seed 0), same rows for every loss",
            "decoding": "beam search constrained to the title trie, 10 beams, full-vocabulary log-probabilities",
            "validation": "off (the release has no validation file; final weights tested)",
            "torch_threads": threads,
        },
        "step_time": {
            "per_loss": steps,
            "batches": step_batches,
            "rounds": step_rounds,
            "method": "same initial model and batches, losses interleaved per round, median per step",
        },
        "results": results,
        "comparison": comparison,
        "paper": PAPER,
    }
    path = write_result(args["name"], payload, started)
    print(f"wrote {path}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
