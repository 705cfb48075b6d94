"""What the resumable LLM-claim benchmarks (``msl_books_pretrained``, ``palr_pretrained``) share: one row = one
``zoo.run`` run (trained, or zero-shot with ``train=false``) whose per-example test ranks are kept, resumable at row
granularity across sessions.

A row's run directory is recorded under ``pending`` before it starts; a row stopped after its training epoch
(``checkpoints/last.ckpt`` exists) resumes from that checkpoint and only tests. A finished row stores its test
hits (``top_ranks``), so a later run rebuilds its per-row ranks without the run directory."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks.common import cutoff_metrics, resumable_result
from benchmarks.loss_swap import top_ranks
from zoo.config import compose
from zoo.run import claim_run_dir, run


def stored_rows(path: Path, resume: dict, fresh: bool) -> tuple[dict[str, dict], dict[str, str]]:
    """The finished rows and the pending run directories of an earlier run with the same ``resume`` settings
    (empty when there is none or ``fresh``; other settings are one ConfigError line, see ``resumable_result``)."""
    stored = resumable_result(path, resume, fresh) or {}
    return dict(stored.get("rows", {})), dict(stored.get("pending", {}))


def run_row(
    name: str,
    recipe: str,
    overrides: list[str],
    runs_dir: Path,
    pending: dict[str, str],
    write: Callable[[], None],
    trained: bool = True,
    threads: int | None = None,
) -> tuple[dict, np.lib.npyio.NpzFile]:
    """Run row ``name`` (recipe + overrides; ``trained=False``: ``train=false``), resuming its pending run when it
    stopped after training. Returns the row's record (metrics, wall time, run dir, test hits) and the saved
    ``test_ranks.npz`` (user, target, rank per test example)."""
    earlier = Path(pending.get(name, ""))
    again = trained and name in pending and (earlier / "checkpoints" / "last.ckpt").is_file()
    run_dir = earlier if again else claim_run_dir(runs_dir / name)
    overrides = [*overrides, "eval.save_ranks=true", f"run_dir={run_dir}"]
    if not trained:
        overrides.append("train=false")
    if again:
        overrides.append(f"resume={run_dir}")
        print(f"{name}: resuming {run_dir} (trained: test only)", flush=True)
    cfg = compose(recipe, overrides)
    pending[name] = str(run_dir)
    write()
    load, tick = os.getloadavg()[0], time.time()
    metrics = run(cfg)
    saved = np.load(run_dir / "test_ranks.npz")
    row = {
        "recipe": recipe,
        "trained": trained,
        "loss": dict(cfg.loss) if trained else None,
        "metrics": cutoff_metrics(metrics),
        "wall_s": round(time.time() - tick, 1),
        "resumed_after_training": again,
        "torch_threads": threads,
        "load_avg_1m_start": round(load, 2),
        "run_dir": str(run_dir),
        "hits": top_ranks(saved["rank"]),
    }
    print(name, row["metrics"], f"{row['wall_s']} s", flush=True)
    return row, saved
