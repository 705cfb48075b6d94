"""TIGER on Amazon Beauty within a stated CPU budget: Recall/NDCG@5/10 on the full test split (22,363 users, beam
20 constrained to real items), with the Semantic-ID stage's collision rate and codebook usage.

The recipe is ``tiger_beauty`` with the overrides in ``CPU_BUDGET`` (a smaller T5 than the paper's, so that a
few epochs fit the budget on a shared 2-core machine) and ``trainer.max_time`` = the budget; validation runs on
the first ``VAL_USERS`` users every ``TRAIN_FRACTION`` of an epoch and the best validation checkpoint is tested.
The model is built by ``zoo.build``: the embeddings and Semantic IDs are the ``semantic_ids`` stage, cached
under ``cache_dir`` (``data.cache_dir``, default ``benchmarks/.cache/tiger``; computed on the first run, reused
after).

    python -m benchmarks.tiger_beauty [budget_min=40] [cache_dir=DIR] [run_root=DIR] [paper_probe=true]
        [dotted.key=value ...]

Run it as a module from the repository root (the package installed); the data root is ``$ZOO_DATA_DIR`` (see
the README's Datasets section). Dotted arguments are config overrides of the recipe.

Writes ``benchmarks/results/tiger_beauty_cpu.json`` with the stage, fit and test wall times (``stage_s`` is the
whole build: corpus, Semantic-ID stage built or reused (``stage_reused``), model), the load average (the machine
is shared by several jobs) and the paper's numbers beside ours.

``paper_probe=true`` instead times the paper-size model (``tiger_beauty`` as shipped: 4+4 layers, MLP 1024, batch
256) for a few training steps and a few hundred test users on real Beauty batches and extrapolates to the paper's
200k steps and the full test split (``tiger_beauty_paper_probe.json``): what a paper-scale run costs here.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from benchmarks.common import cli, flag, integer, key_values, write_result
from zoo.config import compose

BENCH_DIR = Path(__file__).resolve().parent
PAPER = {"test/recall@5": 0.0454, "test/ndcg@5": 0.0321, "test/recall@10": 0.0648, "test/ndcg@10": 0.0384}
VAL_USERS = 1024
TRAIN_FRACTION = 0.25  # one "epoch" of the trainer = a quarter of the training examples (reshuffled each time)
CPU_BUDGET = [
    "model.num_encoder_layers=2",
    "model.num_decoder_layers=2",
    "model.num_heads=4",
    "model.d_kv=32",
    "model.d_ff=512",
    "model.rqvae.epochs=400",
    "model.rqvae.eval_every=50",
    "data.batch_size=128",
    "data.eval_batch_size=128",
    "optim.lr=0.002",
    "optim.warmup_steps=300",
    f"trainer.limit_train_batches={TRAIN_FRACTION}",
    "trainer.limit_val_batches=0.046",  # 8 of the 175 validation batches of 128 users (the schema takes fractions)
    "trainer.check_val_every_n_epoch=1",
    "trainer.early_stopping_patience=8",
    "trainer.max_epochs=1000",
    "trainer.enable_progress_bar=false",
]


def paper_probe(cache_dir: str, run_root: str, extra: list[str]) -> None:
    """Seconds per training step and test users per second of the paper-size TIGER on Beauty batches, with each
    batch run whole (``model.length_groups=1``) and as 4 groups of similar length (the default)."""
    import torch

    from zoo.build import build
    from zoo.data.loading import load_corpus
    from zoo.stages import resolve

    started = time.time()
    steps, users = 5, 256
    base = [
        f"data.cache_dir={cache_dir}",
        "model.rqvae.epochs=400",
        "model.rqvae.eval_every=50",
        f"run_root={run_root}",
        *extra,
    ]
    timings = {}
    corpus = None
    for groups in (1, 4):
        cfg = compose("tiger_beauty", [*base, f"model.length_groups={groups}"])
        if corpus is None:  # the Semantic IDs first, so that both models start from the same seeded weights
            corpus = load_corpus(cfg.data)
            resolve("semantic_ids", cfg, corpus)
        torch.manual_seed(cfg.seed)
        model, datamodule = build(cfg, corpus=corpus)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr)
        model.train()
        step_s = []
        for i, batch in enumerate(datamodule.train_dataloader()):  # the same batches for both settings
            if i > steps:
                break
            t0 = time.perf_counter()
            loss = model.compute_loss(batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            if i:  # the first step warms up allocators
                step_s.append(round(time.perf_counter() - t0, 3))
        model.eval()
        seen, t0 = 0, time.perf_counter()
        for batch in datamodule.test_dataloader():
            model.rank(batch, cfg.eval.num_beams)
            seen += len(batch["target"])
            if seen >= users:
                break
        decode_s = time.perf_counter() - t0
        per_step = sum(step_s) / len(step_s)
        test_users = len(datamodule.examples("test"))
        timings[f"length_groups={groups}"] = {
            "train_s_per_step": step_s,
            "mean_train_s_per_step": round(per_step, 3),
            "train_examples_per_s": round(cfg.data.batch_size / per_step, 1),
            "extrapolated_train_hours_200k_steps": round(200000 * per_step / 3600, 1),
            "test_users_timed": seen,
            "test_users_per_s": round(seen / decode_s, 2),
            "extrapolated_full_test_minutes": round(test_users / (seen / decode_s) / 60, 1),
            "load_avg": [round(x, 2) for x in os.getloadavg()],
        }
        print(groups, timings[f"length_groups={groups}"], flush=True)
    payload = {
        "what": "paper-size TIGER (4+4 layers, d_model 128, 6x64 heads, MLP 1024, batch 256) timed on real Beauty "
        "batches on this CPU, extrapolated to the paper's 200k steps and the full test split",
        "timings": timings,
        "torch_threads": torch.get_num_threads(),
        "num_parameters": sum(p.numel() for p in model.t5.parameters()),
    }
    path = write_result("tiger_beauty_paper_probe", payload, started)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    return cli(_main, __doc__, argv)


def _main(argv: list[str]) -> None:
    extra: list[str] = []
    args = key_values(
        argv,
        {
            "budget_min": 40,  # wall-clock minutes for fit (train + validation)
            "cache_dir": str(BENCH_DIR / ".cache" / "tiger"),
            "run_root": str(BENCH_DIR / ".cache" / "runs"),
            "paper_probe": False,  # time the paper-size model instead (see above)
        },
        overrides=extra,
    )
    budget_min = integer(args, "budget_min", minimum=1)
    if flag(args, "paper_probe"):
        paper_probe(args["cache_dir"], args["run_root"], extra)
        return

    import lightning as L

    from zoo.build import build
    from zoo.io import write_text_atomic
    from zoo.run import RUN_DIR_ENV, resolve_run_dir
    from zoo.trainer import build_trainer

    hours, minutes = divmod(budget_min, 60)
    overrides = [
        *CPU_BUDGET,
        f"trainer.max_time=00:{hours:02d}:{minutes:02d}:00",
        f"data.cache_dir={args['cache_dir']}",
        f"run_root={args['run_root']}",
        *extra,
    ]
    cfg = compose("tiger_beauty", overrides)
    started = time.time()
    load_start = [round(x, 2) for x in os.getloadavg()]
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    run_dir = resolve_run_dir(cfg)
    os.environ[RUN_DIR_ENV] = str(run_dir)

    t0 = time.time()
    stages: dict = {}
    model, datamodule = build(cfg, stages=stages)  # corpus + embeddings, RQ-VAE, Semantic IDs (cached) + model
    stage_s = time.time() - t0
    write_text_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))  # as applied by build
    trainer = build_trainer(cfg, model, run_dir)
    t0 = time.time()
    trainer.fit(model, datamodule=datamodule)
    fit_s = time.time() - t0
    load_after_fit = [round(x, 2) for x in os.getloadavg()]
    best = trainer.checkpoint_callback.best_model_path
    t0 = time.time()
    trainer.test(model, datamodule=datamodule, ckpt_path=best or None, verbose=False)
    test_s = time.time() - t0
    metrics = dict(model.test_results)

    ours = {k: round(metrics[k], 4) for k in PAPER}
    payload = {
        "what": "TIGER on Amazon Beauty (full test split, beam 20 constrained to real items) within a CPU budget",
        "budget": f"{budget_min} min wall-clock of fit (train + validation on {VAL_USERS} users) on the shared "
        f"{os.cpu_count()}-core CPU machine",
        "metrics": {k: round(v, 6) for k, v in metrics.items()},
        "paper": PAPER,
        "ratio_to_paper": {k: round(ours[k] / PAPER[k], 3) for k in PAPER},
        "train_steps": int(trainer.global_step),
        "train_examples_seen": int(trainer.global_step) * cfg.data.batch_size,
        "train_examples_per_epoch": len(datamodule.examples("train")),
        "best_checkpoint": best,
        "best_val_ndcg@10": float(trainer.checkpoint_callback.best_model_score or float("nan")),
        "num_parameters": sum(p.numel() for p in model.t5.parameters()),
        "stage_s": round(stage_s, 1),
        "stage_reused": bool(stages["semantic_ids"].reused),
        "fit_s": round(fit_s, 1),
        "test_s": round(test_s, 1),
        "test_users_per_s": round(len(datamodule.examples("test")) / test_s, 2),
        "load_avg_start": load_start,
        "load_avg_after_fit": load_after_fit,
        "load_avg_end": [round(x, 2) for x in os.getloadavg()],
        "torch_threads": __import__("torch").get_num_threads(),
        "overrides": overrides,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "run_dir": str(run_dir),
    }
    path = write_result("tiger_beauty_cpu", payload, started)
    print({k: payload[k] for k in ("metrics", "fit_s", "test_s", "train_steps")})
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
