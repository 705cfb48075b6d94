"""Laser's ablations on MovieLens-100K (issue 18): does the MoE prefix over collaborative embeddings help?

Arms, each ``laser_ml100k`` (tiny-llama, frozen) at the same small fixed budget and seed:

* ``full``: the recipe (M-Former prefix over the frozen SASRec's item embeddings, 4 experts, top-1 in stage 2);
* ``no_prefix``: ``model.prefix=none`` (text + suffix only);
* ``learned_prefix``: ``model.prefix=learned`` (Q plain learned prefix vectors, no CF);
* ``one_expert`` / ``eight_experts``: ``model.num_experts=1`` / ``8``.

Budget per arm: ``steps`` training steps of ``batch`` users (validation every ``val_every`` steps on ``val_batches``
batches, the best checkpoint tested), test on every user (full ranking, the shared protocol). The frozen SASRec is
the ``retriever`` stage trained once for ``sasrec_minutes`` (shared by every arm through the stage cache); stage 1
(ITC) is one epoch, per expert count. Reported per arm: test metrics, training wall time, and the stage metrics.

    python -m benchmarks.laser_ablation [arms=full,no_prefix,learned_prefix,one_expert,eight_experts] [steps=300]
        [batch=32] [val_every=100] [val_batches=4] [sasrec_minutes=3] [threads=1] [name=laser_ablation]

Writes ``benchmarks/results/<name>.json``.
"""

from __future__ import annotations

import tempfile
import time

import torch

from benchmarks.common import cli, integer, key_values, names, write_result

ARMS = {
    "full": [],
    "no_prefix": ["model.prefix=none"],
    "learned_prefix": ["model.prefix=learned"],
    "one_expert": ["model.num_experts=1", "model.top_k_stage1=1"],
    "eight_experts": ["model.num_experts=8", "model.top_k_stage1=2"],
}
DOC = __doc__


def arm_overrides(arm: str, settings: dict, run_root: str) -> list[str]:
    steps, val_every = integer(settings, "steps", 1), integer(settings, "val_every", 1)
    minutes = integer(settings, "sasrec_minutes", 1)
    return [
        *ARMS[arm],
        f"trainer.max_steps={steps}",
        "trainer.max_epochs=-1",
        f"trainer.limit_train_batches={val_every}",
        f"trainer.limit_val_batches={integer(settings, 'val_batches', 1)}",
        "trainer.early_stopping_patience=0",
        "trainer.enable_progress_bar=false",
        f"data.batch_size={integer(settings, 'batch', 2)}",
        "data.num_workers=0",
        "logger.name=none",
        f"run_root={run_root}",
        "model.retriever_overrides=[trainer.max_epochs=1000,"
        f"trainer.max_time=00:00:{minutes:02d}:00,trainer.enable_progress_bar=false,logger.name=none]",
    ]


def body(argv: list[str]) -> None:
    from zoo.config import compose
    from zoo.run import run

    settings = key_values(
        argv,
        {
            "arms": ",".join(ARMS),
            "steps": "300",
            "batch": "32",
            "val_every": "100",
            "val_batches": "4",
            "sasrec_minutes": "3",
            "threads": "1",
            "name": "laser_ablation",
        },
    )
    arms = names(settings, "arms", list(ARMS))
    torch.set_num_threads(integer(settings, "threads", 1))
    started = time.time()
    rows = []
    with tempfile.TemporaryDirectory() as run_root:
        for arm in arms:
            cfg = compose("laser_ml100k", arm_overrides(arm, settings, run_root))
            t0 = time.time()
            metrics = run(cfg)
            row = {
                "arm": arm,
                "overrides": ARMS[arm],
                "wall_s": round(time.time() - t0, 1),
                "train_s": metrics.get("time/train_s"),
                **{k: v for k, v in sorted(metrics.items()) if k.startswith(("test/", "stage/", "best/", "time/"))},
            }
            rows.append(row)
            print(
                f"{arm}: ndcg@10={row.get('test/ndcg@10')} recall@10={row.get('test/recall@10')} ({row['wall_s']} s)",
                flush=True,
            )
    write_result(
        settings["name"],
        {
            "dataset": "ml100k",
            "recipe": "laser_ml100k",
            "budget": {k: settings[k] for k in ("steps", "batch", "val_every", "val_batches", "sasrec_minutes")},
            "threads": integer(settings, "threads", 1),
            "arms": rows,
            "note": "tiny-llama is a randomly initialised frozen 2-layer Llama: the arms compare what the trained "
            "prefix / suffix extract through it, not a pretrained LLM's knowledge",
        },
        started,
    )


def main(argv: list[str] | None = None) -> int:
    return cli(body, DOC, argv)


if __name__ == "__main__":
    raise SystemExit(main())
