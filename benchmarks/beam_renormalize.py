"""Beam scores of a generative method over the full vocabulary (the default) against scores renormalised over the
tokens its item trie allows at each step (``eval.renormalize=true``: an item's probability among real items, the
distribution MSL trains). Each given run's best checkpoint is re-tested both ways on every test user with the same
code, so the two rows differ only in the scoring.

    python -m benchmarks.beam_renormalize runs=RUN_DIR[,RUN_DIR...] [threads=1] [name=beam_renormalize]

``runs`` are ``zoo.run`` directories of generative methods (``llmrec``, ``uem``, ``p5``, ``tiger``, ``palr``) with a
``best.ckpt``; evaluating never rewrites them. The JSON (``benchmarks/results/<name>.json``) is rewritten after
every run and keyed by run directory: a second call re-tests only the runs it does not hold yet.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from benchmarks import common
from benchmarks.common import cli, integer, key_values, write_result
from zoo.errors import ConfigError


def evaluate(run_dir: Path, renormalize: bool) -> dict:
    """The test metrics of ``run_dir``'s best checkpoint with ``eval.renormalize`` set, and the test's time."""
    return common.retest(run_dir, [f"eval.renormalize={str(renormalize).lower()}"], timed=True)


def run_record(run_dir: Path) -> dict:
    cfg = common.run_config(run_dir)
    rows = {}
    for renormalize in (False, True):
        rows["renormalised" if renormalize else "full_vocabulary"] = evaluate(run_dir, renormalize)
    full, renormed = rows["full_vocabulary"], rows["renormalised"]
    return {
        "recipe": cfg.get("recipe"),
        "model": (cfg.get("model") or {}).get("name"),
        "loss": (cfg.get("loss") or {}).get("name"),
        **rows,
        "ndcg@10_renormalised_minus_full": round(renormed["test/ndcg@10"] - full["test/ndcg@10"], 5),
    }


def _main(argv: list[str]) -> None:
    args = key_values(argv, {"runs": "", "threads": "1", "name": "beam_renormalize"})
    runs = common.finished_runs(args["runs"])
    if not args["name"]:
        raise ConfigError("name must not be empty")
    torch.set_num_threads(integer(args, "threads", 1))
    started = time.time()
    path = common.RESULTS_DIR / f"{args['name']}.json"
    found: dict = (json.loads(path.read_text()) if path.is_file() else {}).get("runs", {})
    for run_dir in runs:
        if str(run_dir) in found:
            print(f"{run_dir}: already in {path.name}", flush=True)
            continue
        found[str(run_dir)] = run_record(run_dir)
        print(run_dir, found[str(run_dir)]["ndcg@10_renormalised_minus_full"], flush=True)
        payload = {
            "what": "constrained beam search scored over the full vocabulary vs renormalised over the allowed tokens",
            "protocol": "each run's best checkpoint, every test user, both scorings by the same code",
            "threads": integer(args, "threads", 1),
            "runs": found,
        }
        write_result(args["name"], payload, started, common.RESULTS_DIR)


def main(argv: list[str] | None = None) -> int:
    return cli(_main, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
