"""How much the evaluation protocol moves a number: re-test finished leaderboard cells under another protocol.

    python -m benchmarks.protocols cells=sasrec_bce__beauty__cpu,sasrec__beauty__cpu [threads=1]

For each cell (a ``benchmarks/results/<method>__<dataset>__<budget>.json`` whose run directory still holds its
``checkpoints/best.ckpt``), the best checkpoint is tested twice on the full test split, with the cell's own
recipe and budget overrides:

* ``leaderboard``: the zoo's protocol (full ranking, the user's own items not masked). It must give the cell's
  recorded metrics again (``matches_cell``), which checks that the checkpoint and data are the ones of the cell.
* ``mask_seen``: the cell rebuilt with ``eval.mask_seen=true`` (``zoo.build``), which removes from the ranking
  every item the user interacted with before the target: the whole history, not only the ``data.max_len`` items
  the model reads (the target itself is never removed). That is what the S3-Rec code behind the literature's
  SASRec row does (its full-ranking evaluation sets the scores of the user's training items to 0 before ranking).

Writes ``benchmarks/results/protocol_mask_seen.json`` with both sets of Recall/NDCG@5/10 per cell and the paper's
numbers (``benchmarks/papers.yaml``) beside them. The leaderboard itself keeps one protocol for every method.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from benchmarks.common import cli, integer, key_values, names, write_result
from benchmarks.render import METRICS, load_papers, relative_difference
from zoo.errors import ConfigError, DataError

RESULTS_DIR = Path(__file__).resolve().parent / "results"
NAME = "protocol_mask_seen"
VOLATILE = ("run_dir=", "run_root=", "logger.", "resume=")


def retest(record: dict, mask_seen: bool) -> dict[str, float]:
    """Test metrics of the cell's best checkpoint, rebuilt with ``eval.mask_seen`` set."""
    import lightning as L

    from zoo.build import build
    from zoo.config import compose
    from zoo.trainer import batch_limit

    ckpt = Path(record["run_dir"]) / "checkpoints" / "best.ckpt"
    if not ckpt.is_file():
        raise DataError(f"{record['name']}: no best checkpoint at {ckpt} (re-run the cell to make one)")
    overrides = [o for o in record.get("overrides", []) if not o.startswith(VOLATILE)]
    cfg = compose(record["recipe"], [*overrides, f"eval.mask_seen={str(mask_seen).lower()}"])
    model, datamodule = build(cfg)
    limit = 1.0 if cfg.trainer.limit_test_batches is None else batch_limit(cfg.trainer.limit_test_batches)
    trainer = L.Trainer(
        logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", limit_test_batches=limit
    )
    trainer.test(model, datamodule=datamodule, ckpt_path=ckpt, verbose=False)
    return {m: float(model.test_results[f"test/{m}"]) for m in METRICS}


def run(cells: list[str], results_dir: Path = RESULTS_DIR, out_dir: Path = RESULTS_DIR) -> Path:
    started = time.time()
    papers = load_papers()
    rows = []
    for name in cells:
        path = results_dir / f"{name}.json"
        if not path.is_file():
            raise ConfigError(f"no leaderboard cell '{name}' ({path} missing)")
        record = json.loads(path.read_text())
        leaderboard, masked = retest(record, False), retest(record, True)
        recorded = {m: float(record["metrics"][f"test/{m}"]) for m in METRICS}
        paper = papers.find(record["method"], record["dataset"])
        row = {
            "cell": name,
            "method": record["method"],
            "dataset": record["dataset"],
            "checkpoint": str(Path(record["run_dir"]) / "checkpoints" / "best.ckpt"),
            "leaderboard": leaderboard,
            "mask_seen": masked,
            "matches_cell": all(abs(leaderboard[m] - recorded[m]) < 1e-6 for m in METRICS),
            "mask_seen_over_leaderboard": {m: masked[m] / leaderboard[m] for m in METRICS if leaderboard[m] > 0},
        }
        if paper is not None:
            row["paper"] = {"row": paper.citation(), "values": paper.values}
            row["vs_paper"] = {
                protocol: {m: relative_difference(row[protocol][m], paper.values[m]) for m in METRICS}
                for protocol in ("leaderboard", "mask_seen")
            }
        rows.append(row)
        print(json.dumps({k: row[k] for k in ("cell", "leaderboard", "mask_seen", "matches_cell")}), flush=True)
    payload = {
        "what": "the same best checkpoints tested under the leaderboard protocol and with the user's items masked",
        "mask_rule": "eval.mask_seen=true removes every item the user interacted with before the target (the whole "
        "history, not only the data.max_len window) from the ranking; S3-Rec's code sets the scores of the user's "
        "training items to 0 instead",
        "cells": rows,
    }
    return write_result(NAME, payload, started, directory=out_dir)


def main(argv: list[str] | None = None) -> int:
    return cli(_main, __doc__, argv)


def _main(argv: list[str]) -> None:
    args = key_values(argv, {"cells": "", "threads": ""})
    if not args["cells"]:
        raise ConfigError("usage: python -m benchmarks.protocols cells=a__b__cpu,c__d__cpu [threads=N]")
    if args["threads"]:
        import torch

        torch.set_num_threads(integer(args, "threads", minimum=1))
    print(f"wrote {run(names(args, 'cells'))}")


if __name__ == "__main__":
    sys.exit(main())
