"""PALR's claim at CPU scale: the LLM re-ranking SASRec's top-50 vs SASRec's own top-10, for the same users.

1. SASRec (recipe ``sasrec_ml100k``, full softmax CE) is PALR's ``retriever`` stage (``zoo.stages``): trained under
   a wall-time cap (``sasrec_minutes``, passed in ``model.retriever_overrides``), its top-50 per user exported
   (``candidates.npz``) and cached, so a later run with the same settings reuses it (``reused`` in the JSON);
   ``candidates=PATH`` instead reads an existing export (``model.retriever=file``).
2. SASRec's own ranking of the test users is read from that file (its top-10 is the first 10 of the 50): HR and
   NDCG @5/@10, and HR@50 = the best any re-ranker of these lists can reach.
3. PALR (recipe ``palr_ml100k``: ``tiny-llama`` trained from scratch, <= 20 history titles + the 50 candidate
   titles in the prompt, Recommend / Recommend_Retrieval mixed 50/50) trains for ``epochs`` epochs of at most
   ``train_batches`` batches (a subsample of the ~98k training prefixes per epoch, stated in the JSON), without
   validation, and re-ranks the same test users' lists by beam search constrained to their candidates.

    nohup python -m benchmarks.palr [candidates=PATH] [sasrec_minutes=10] [epochs=2] [train_batches=300]
        [loss=lml] [seed=42] [threads=1] > /tmp/palr.log 2>&1 &

Writes ``benchmarks/results/palr.json``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import cli, integer, key_values, write_result
from zoo.config import compose
from zoo.data import SequentialDataModule
from zoo.data.candidates import load_candidates
from zoo.data.loading import load_corpus
from zoo.metrics import ranked_list_metrics
from zoo.run import claim_run_dir, run

CACHE = Path(__file__).resolve().parent / ".cache" / "palr"
RECIPE = "palr_ml100k"
K = 50  # the retriever's list length
PAPER = {
    "source": "Yang et al., 2023 (PALR): LLaMA-7B re-ranking SASRec's top-50 on MovieLens-1M and Amazon Beauty",
    "claim": "PALR's re-ranked top-10 beats SASRec's own top-10",
}


def retriever_metrics(candidates_path: Path, ks: tuple[int, ...], cfg, corpus) -> dict[str, float]:
    """Metrics of the retriever's own ranked lists on the test split (same users and targets as PALR's test)."""
    examples = SequentialDataModule(cfg.data, seed=cfg.seed, corpus=corpus).examples("test")
    users, items = load_candidates(candidates_path)["test"]
    row_of = {int(u): i for i, u in enumerate(users.tolist())}
    ranked = torch.from_numpy(items[[row_of[int(u)] for u in examples.user]])
    out = ranked_list_metrics(ranked, torch.from_numpy(examples.target), ks)
    return {f"test/{k}": round(v, 5) for k, v in out.items() if k.split("@")[0] in ("hr", "ndcg")}


def retriever_stage(cfg, corpus, minutes: int) -> tuple[Path, dict]:
    """Resolve PALR's ``retriever`` stage (SASRec trained and exported, or reused from the cache): the path of its
    candidates and what the JSON records of it."""
    from zoo.stages import MANIFEST, resolve

    artifact = resolve("retriever", cfg, corpus)
    manifest = json.loads(artifact.file(MANIFEST).read_text())
    return artifact.file("candidates.npz"), {
        "full_ranking_metrics": {
            k.removeprefix("retriever/"): round(v, 5)
            for k, v in artifact.metrics.items()
            if k.startswith("retriever/test/")
        },
        "run_dir": str(artifact.file("run")),
        "run_wall_s": round(float(manifest.get("build_s", float("nan"))), 1),  # when the stage was built
        "wall_cap_minutes": minutes,
        "stage_key": artifact.key,
        "reused": artifact.reused,
    }


def main(argv: list[str] | None = None) -> int:
    return cli(_main, __doc__, argv)


def _main(argv: list[str]) -> None:
    args = key_values(
        argv,
        {
            "candidates": "",  # an existing candidates.npz (model.retriever=file): no SASRec stage
            "sasrec_minutes": 10,
            "epochs": 2,
            "train_batches": 300,
            "loss": "lml",
            "seed": 42,
            "threads": 1,
        },
    )
    minutes, epochs = integer(args, "sasrec_minutes", minimum=1), integer(args, "epochs", minimum=1)
    train_batches, seed = integer(args, "train_batches", minimum=1), integer(args, "seed")
    threads, loss = integer(args, "threads", minimum=1), args["loss"]
    started = time.time()
    torch.set_num_threads(threads)
    common = [f"seed={seed}", "trainer.enable_progress_bar=false"]
    if args["candidates"]:
        retriever = ["model.retriever=file", f"data.candidates_path={Path(args['candidates'])}"]
    else:
        hours, mins = divmod(minutes, 60)
        cap = json.dumps([f"trainer.max_time=00:{hours:02d}:{mins:02d}:00"])
        retriever = ["model.retriever=stage", f"model.retriever_k={K}", f"model.retriever_overrides={cap}"]
    run_dir = claim_run_dir(CACHE / "runs" / RECIPE)
    cfg = compose(
        RECIPE,
        [
            *common,
            *retriever,
            f"loss.name={loss}",
            f"trainer.max_epochs={epochs}",
            f"trainer.limit_train_batches={train_batches}",
            "trainer.limit_val_batches=0",
            "trainer.early_stopping_patience=0",
            "eval.ks=[5,10]",
            "eval.num_beams=10",
            f"run_dir={run_dir}",
        ],
    )
    corpus = load_corpus(cfg.data)
    if args["candidates"]:
        candidates, sasrec = Path(args["candidates"]), {}
    else:
        candidates, sasrec = retriever_stage(cfg, corpus, minutes)
        print("sasrec", sasrec["full_ranking_metrics"], f"(stage {'reused' if sasrec['reused'] else 'built'})")
    sasrec["top50_lists"] = retriever_metrics(candidates, (5, 10, K), cfg, corpus)
    sasrec["candidates_path"] = str(candidates)
    print("sasrec lists", sasrec["top50_lists"], flush=True)
    run_started = time.time()
    metrics = run(cfg, corpus=corpus)  # the retriever stage resolved above is reused
    palr = {
        "metrics": {k: round(v, 5) for k, v in metrics.items() if k.split("/")[-1].split("@")[0] in ("hr", "ndcg")},
        "run_dir": str(run_dir),
        "run_wall_s": round(time.time() - run_started, 1),
    }
    print("palr", palr["metrics"], flush=True)
    lists = sasrec["top50_lists"]
    payload = {
        "setting": {
            "dataset": "MovieLens-100K (leave-one-out; test = last item of each of the 943 users)",
            "retriever": f"SASRec (recipe sasrec_ml100k, full softmax CE), top-{K} per user"
            + (f", read from {candidates}" if args["candidates"] else ", PALR's retriever stage (cached)"),
            "reranker": "PALR with tiny-llama (2 layers, hidden 64, from scratch, BERT WordPiece vocab)",
            "palr_training": f"{epochs} epochs x at most {train_batches} batches of 16 shuffled prefixes, "
            f"loss {loss}, Recommend / Recommend_Retrieval 50/50, no validation (final weights)",
            "palr_decoding": f"beam search constrained to each user's {K} candidates, 10 beams",
            "seed": seed,
            "torch_threads": threads,
        },
        "sasrec": sasrec,
        "palr": palr,
        "comparison": {
            "users": 943,
            "palr_ndcg@10_minus_sasrec_top10": round(palr["metrics"]["test/ndcg@10"] - lists["test/ndcg@10"], 5),
            "palr_hr@10_minus_sasrec_top10": round(palr["metrics"]["test/hr@10"] - lists["test/hr@10"], 5),
            "palr_beats_sasrec_top10_on_ndcg@10": palr["metrics"]["test/ndcg@10"] > lists["test/ndcg@10"],
            "rerank_ceiling_hr@50": lists["test/hr@50"],
        },
        "paper": PAPER,
    }
    print(f"wrote {write_result('palr', payload, started)}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
