"""PALR's claim at CPU scale: the LLM re-ranking SASRec's top-50 vs SASRec's own top-10, for the same users.

1. SASRec (recipe ``sasrec_ml100k``, full softmax CE) trains under a wall-time cap and exports its top-50 per user
   (``model.export_candidates_k=50`` -> ``candidates.npz``); ``--candidates PATH`` reuses an existing export.
2. SASRec's own ranking of the test users is read from that file (its top-10 is the first 10 of the 50): HR and
   NDCG @5/@10, and HR@50 = the best any re-ranker of these lists can reach.
3. PALR (recipe ``palr_ml100k``: ``tiny-llama`` trained from scratch, <= 20 history titles + the 50 candidate
   titles in the prompt, Recommend / Recommend_Retrieval mixed 50/50) trains for ``--epochs`` epochs of at most
   ``--train-batches`` batches (a subsample of the ~98k training prefixes per epoch, stated in the JSON), without
   validation, and re-ranks the same test users' lists by beam search constrained to their candidates.

Usage: ``nohup python3 -m benchmarks.palr > /tmp/palr.log 2>&1 &``. Writes ``benchmarks/results/palr.json``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from benchmarks.common import write_result
from zoo.config import compose
from zoo.data import SequentialDataModule
from zoo.data.candidates import load_candidates
from zoo.metrics import ranked_list_metrics
from zoo.run import run

CACHE = Path(__file__).resolve().parent / ".cache" / "palr"
PAPER = {
    "source": "Yang et al., 2023 (PALR): LLaMA-7B re-ranking SASRec's top-50 on MovieLens-1M and Amazon Beauty",
    "claim": "PALR's re-ranked top-10 beats SASRec's own top-10",
}


def run_recipe(recipe: str, overrides: list[str]) -> tuple[dict[str, float], Path, float]:
    started = time.time()
    run_dir = CACHE / "runs" / recipe / time.strftime("%Y%m%d-%H%M%S")
    metrics = run(compose(recipe, [*overrides, f"run_dir={run_dir}"]))
    return metrics, run_dir, round(time.time() - started, 1)


def retriever_metrics(candidates_path: Path, ks: tuple[int, ...]) -> dict[str, float]:
    """Metrics of the retriever's own ranked lists on the test split (same users and targets as PALR's test)."""
    datamodule = SequentialDataModule(compose("palr_ml100k").data)
    examples = datamodule.examples("test")
    users, items = load_candidates(candidates_path)["test"]
    row_of = {int(u): i for i, u in enumerate(users.tolist())}
    ranked = torch.from_numpy(items[[row_of[int(u)] for u in examples.user]])
    out = ranked_list_metrics(ranked, torch.from_numpy(examples.target), ks)
    return {f"test/{k}": round(v, 5) for k, v in out.items() if k.split("@")[0] in ("hr", "ndcg")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=Path, default=None, help="reuse a candidates.npz (skip SASRec)")
    parser.add_argument("--sasrec-minutes", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-batches", type=int, default=300)
    parser.add_argument("--loss", default="lml")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    started = time.time()
    torch.set_num_threads(args.threads)
    common = [f"seed={args.seed}", "trainer.enable_progress_bar=false"]
    sasrec = {}
    if args.candidates is None:
        metrics, run_dir, wall = run_recipe(
            "sasrec_ml100k",
            [*common, "model.export_candidates_k=50", f"trainer.max_time=00:00:{args.sasrec_minutes:02d}:00"],
        )
        args.candidates = run_dir / "candidates.npz"
        sasrec = {
            "full_ranking_metrics": {k: round(v, 5) for k, v in metrics.items() if k.startswith("test/")},
            "run_dir": str(run_dir),
            "run_wall_s": wall,
            "wall_cap_minutes": args.sasrec_minutes,
        }
        print("sasrec", sasrec["full_ranking_metrics"], flush=True)
    sasrec["top50_lists"] = retriever_metrics(args.candidates, (5, 10, 50))
    sasrec["candidates_path"] = str(args.candidates)
    print("sasrec lists", sasrec["top50_lists"], flush=True)
    metrics, run_dir, wall = run_recipe(
        "palr_ml100k",
        [
            *common,
            f"data.candidates_path={args.candidates}",
            f"loss.name={args.loss}",
            f"trainer.max_epochs={args.epochs}",
            f"trainer.limit_train_batches={args.train_batches}",
            "trainer.limit_val_batches=0",
            "trainer.early_stopping_patience=0",
            "eval.ks=[5,10]",
            "eval.num_beams=10",
        ],
    )
    palr = {
        "metrics": {k: round(v, 5) for k, v in metrics.items() if k.split("/")[-1].split("@")[0] in ("hr", "ndcg")},
        "run_dir": str(run_dir),
        "run_wall_s": wall,
    }
    print("palr", palr["metrics"], flush=True)
    lists = sasrec["top50_lists"]
    payload = {
        "setting": {
            "dataset": "MovieLens-100K (leave-one-out; test = last item of each of the 943 users)",
            "retriever": "SASRec (recipe sasrec_ml100k, full softmax CE), top-50 per user",
            "reranker": "PALR with tiny-llama (2 layers, hidden 64, from scratch, BERT WordPiece vocab)",
            "palr_training": f"{args.epochs} epochs x at most {args.train_batches} batches of 16 shuffled prefixes, "
            f"loss {args.loss}, Recommend / Recommend_Retrieval 50/50, no validation (final weights)",
            "palr_decoding": "beam search constrained to each user's 50 candidates, 10 beams",
            "seed": args.seed,
            "torch_threads": args.threads,
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
    main()
