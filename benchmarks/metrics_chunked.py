"""Chunked vs full-matrix ranking evaluation: users per second and peak memory at several catalogue sizes.

Scoring is a 64-d dot product (users x items), the shape of SASRec-style evaluation. Two ways to rank the target:

* ``chunked``: users in batches of ``user_batch``, items in chunks of ``item_chunk`` scored one at a time, exact
  top-(max K + 1) merge (``zoo.metrics.chunked_target_ranks``); memory O(user_batch x item_chunk).
* ``full``: one [users, N+1] score matrix and ``zoo.metrics.target_ranks`` on it; memory O(users x N). It runs only
  with as many users as fit ``full_budget_gb`` (4 bytes of score per entry; ``target_ranks`` itself counts in
  column blocks and adds little): 10k users x 1M items would need 40 GB for the scores alone, more than this
  machine has, so at 1M it runs with fewer users and says so.

Every configuration runs in its own subprocess so that peak resident memory (``ru_maxrss``) is its own; the
baseline (interpreter, torch, embeddings) is reported beside it. Chunked and full ranks are checked equal (capped
at max K + 1) on the users both ranked. The machine is shared: the 1-minute load average before and after each
run is recorded; timings are wall-clock under that load.

    python -m benchmarks.metrics_chunked [users=10000] [items=10000,100000,1000000] [dim=64] [user_batch=1024]
        [item_chunk=32768] [full_budget_gb=6]

Run it as a module from the repository root (the package installed); each configuration runs the same way
(``_one=SPEC``, internal). Writes benchmarks/results/metrics_chunked.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import cli, integer, integers, key_values, number, write_result

REPO = Path(__file__).resolve().parents[1]
KS = (5, 10, 20)


def run_one(spec: dict) -> dict:
    """One configuration, inside its own process: build embeddings, rank every user's target, time it."""
    import torch

    from zoo.metrics import chunked_target_ranks, metrics_from_ranks, target_ranks

    torch.manual_seed(spec["seed"])
    items, users, dim, max_k = spec["items"], spec["users"], spec["dim"], max(KS)
    item_emb = torch.randn(items + 1, dim)
    targets = torch.randint(1, items + 1, (users,))
    user_emb = item_emb[targets] + 1.5 * torch.randn(users, dim)  # targets rank high, but not always first
    baseline_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    if spec["mode"] == "chunked":
        parts = []
        for start in range(0, users, spec["user_batch"]):
            batch = user_emb[start : start + spec["user_batch"]]
            parts.append(
                chunked_target_ranks(
                    lambda s, e, b=batch: b @ item_emb[s:e].T,
                    targets[start : start + spec["user_batch"]],
                    items,
                    spec["item_chunk"],
                    max_k,
                )
            )
        ranks = torch.cat(parts)
    else:
        ranks = target_ranks(user_emb @ item_emb.T, targets).clamp(max=max_k + 1)
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    metrics = metrics_from_ranks(ranks, KS)
    return {
        **spec,
        "seconds": round(seconds, 3),
        "users_per_s": round(users / seconds, 1),
        "peak_rss_mb": round(peak_mb, 1),
        "baseline_rss_mb": round(baseline_mb, 1),
        "eval_extra_mb": round(peak_mb - baseline_mb, 1),
        "torch_threads": torch.get_num_threads(),
        "ranks_sha1": hashlib.sha1(ranks.numpy().tobytes()).hexdigest(),
        "recall@10": round(metrics["recall@10"], 6),
        "ndcg@10": round(metrics["ndcg@10"], 6),
    }


def in_subprocess(spec: dict) -> dict:
    """Run ``run_one(spec)`` in a fresh interpreter; record the load average around it."""
    load_before = os.getloadavg()[0]
    command = [sys.executable, "-m", "benchmarks.metrics_chunked", f"_one={json.dumps(spec)}"]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        return {**spec, "error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["load_avg_1m_before"], result["load_avg_1m_after"] = round(load_before, 2), round(os.getloadavg()[0], 2)
    return result


def available_gb() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    return 0.0


def main(argv: list[str] | None = None) -> int:
    return cli(_main, __doc__, argv)


def _main(argv: list[str]) -> None:
    args = key_values(
        argv,
        {
            "users": 10_000,
            "items": "10000,100000,1000000",
            "dim": 64,
            "user_batch": 1024,
            "item_chunk": 32_768,
            "full_budget_gb": 6.0,
            "_one": "",  # internal: run one JSON spec and print its result
        },
    )
    if args["_one"]:
        print(json.dumps(run_one(json.loads(args["_one"]))))
        return
    users, items_list = integer(args, "users", minimum=1), integers(args, "items", minimum=1)
    dim = integer(args, "dim", minimum=1)
    user_batch, item_chunk = integer(args, "user_batch", minimum=1), integer(args, "item_chunk", minimum=1)
    full_budget_gb = number(args, "full_budget_gb", minimum=0)

    started = time.time()
    runs, checks = [], []
    for items in items_list:
        base = {"items": items, "dim": dim, "seed": 0}
        chunked = in_subprocess(
            {
                **base,
                "mode": "chunked",
                "users": users,
                "user_batch": user_batch,
                "item_chunk": item_chunk,
            }
        )
        runs.append(chunked)
        print(json.dumps(chunked), flush=True)
        bytes_per_user = (items + 1) * 4
        full_users = min(users, int(full_budget_gb * 2**30 // bytes_per_user))
        if full_users < users:
            full_users = max(full_users - full_users % user_batch, 1)
        need_gb = full_users * bytes_per_user / 2**30
        note = None
        if full_users < users:
            note = (
                f"{users} users would need {users * bytes_per_user / 2**30:.1f} GB for the full matrix "
                f"(> {full_budget_gb} GB budget); measured with {full_users} users"
            )
        if need_gb * 1.3 + 1 > available_gb():
            runs.append(
                {
                    **base,
                    "mode": "full",
                    "users": full_users,
                    "skipped": f"needs ~{need_gb:.1f} GB, {available_gb():.1f} GB available",
                }
            )
            continue
        full = in_subprocess({**base, "mode": "full", "users": full_users})
        if note:
            full["note"] = note
        runs.append(full)
        print(json.dumps(full), flush=True)
        if "error" not in full and "error" not in chunked:
            # the first full_users users are the same users in both runs (same seed, same draws)
            same = full_users == users and full["ranks_sha1"] == chunked["ranks_sha1"]
            checks.append({"items": items, "users_compared": full_users, "ranks_equal": same})
            if full_users < users:
                sub = in_subprocess(
                    {
                        **base,
                        "mode": "chunked",
                        "users": full_users,
                        "user_batch": user_batch,
                        "item_chunk": item_chunk,
                    }
                )
                checks[-1]["ranks_equal"] = sub.get("ranks_sha1") == full["ranks_sha1"]
    failed = [run for run in runs if "error" in run]
    if failed:
        sys.exit(f"{len(failed)} configuration(s) failed, nothing written: {failed[0]['error']}")
    payload = {
        "description": "ranking evaluation of 64-d dot-product scores: chunked exact top-K merge vs one full matrix",
        "ks": list(KS),
        "runs": runs,
        "chunked_equals_full": checks,
        "note": "CPU shared by several engineers: see load_avg_1m_before/after per run; timings are not isolated",
    }
    path = write_result("metrics_chunked", payload, started)
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
