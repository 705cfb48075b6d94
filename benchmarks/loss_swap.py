"""A loss as a drop-in: one recipe at one leaderboard budget, trained once per loss (same data, seed, budget and
everything else), tested on every test user, with paired bootstrap intervals of each loss against a reference.

This is how the zoo measures MSL (masked softmax over the valid next tokens) against LML on a generative method
other than the MSL paper's own setting, e.g. P5 over its item-id trie (issue #16):

    nohup python -m benchmarks.loss_swap recipe=p5_ml100k budget=cpu [losses=lml,msl,msl_ats] [reference=lml]
        [steps=0] [seeds=42] [name=<recipe>_losses_<budget>] [bootstrap=1000] [fresh=false] > /tmp/losses.log 2>&1 &

Every run is the leaderboard cell of ``recipe`` under ``budget`` (``benchmarks/budgets.yaml``, the overrides
``benchmarks.run`` applies, and the budget's torch threads) with ``loss.name`` set and ``eval.save_ranks=true``;
``steps=N`` trains N optimizer steps instead of the budget's time cap, so a slower loss is not given fewer. The
JSON (``benchmarks/results/<name>.json``) is written after every finished run, resumable at (loss, seed)
granularity: a re-run with the same settings does only the missing runs; other settings are refused in one line
(``fresh=true`` starts over). Two calls at once on other losses (one core each) keep each other's runs. For each
loss: the test metrics per seed, training steps and wall time, and the test rows that hit the top 20 (enough for
every metric at <= 20); over the pooled (seed, user) rows: mean NDCG@10 with a 95% bootstrap interval, and the
paired difference to ``reference`` with its interval.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from benchmarks import common
from benchmarks.common import (
    bootstrap,
    cli,
    flag,
    integer,
    integers,
    key_values,
    locked,
    names,
    ndcg_at,
    resumable_result,
    write_result,
)
from zoo.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]
LOSSES = ("lml", "msl", "msl_ats")


def run_one(recipe: str, budget: str, loss: str, seed: int, steps: int, run_root: Path) -> dict:
    """Train and test ``recipe`` under ``budget`` with ``loss`` (for ``steps`` optimizer steps instead of the
    budget's time cap when > 0); the run's metrics, training steps and per-user ranks."""

    from benchmarks.run import cell_overrides, epochs_run, load_budgets, recipe_cells, use_budget_threads
    from zoo.config import compose, load_recipe
    from zoo.run import claim_run_dir, run

    budgets = load_budgets()
    model_name = (load_recipe(recipe).get("model") or {}).get("name")
    # the grid's method of a <method>_<dataset> recipe (its budget entry), else the model's own entry
    method = next((m for (m, _), r in recipe_cells().items() if r == recipe), model_name)
    run_dir = claim_run_dir(run_root / f"{recipe}__{loss}__seed{seed}")
    overrides = cell_overrides(budgets, budget, method, model_name, None, run_dir)
    overrides += [f"loss.name={loss}", f"seed={seed}", "eval.save_ranks=true"]
    if steps:  # the same optimizer steps for every loss (a time cap gives a slower loss fewer)
        overrides += [f"trainer.max_steps={steps}", "trainer.max_time=null"]
    use_budget_threads(budgets, budget)
    cfg = compose(recipe, overrides)
    tick = time.time()
    metrics = run(cfg)
    saved = np.load(run_dir / "test_ranks.npz")
    return {
        "seed": seed,
        "metrics": {k: round(float(v), 6) for k, v in metrics.items() if k.startswith(("test/", "best/"))},
        "wall_s": round(time.time() - tick, 1),
        "trained": epochs_run(run_dir),
        "run_dir": str(run_dir),
        "hits": top_ranks(saved["rank"]),
    }


def top_ranks(ranks: np.ndarray, k: int = 20) -> dict:
    """The test rows whose target ranked in the top ``k`` (all NDCG/HR@<=k need), compactly: row count, rows and
    0-based ranks; every other row is a miss."""
    ranks = np.asarray(ranks)
    rows = np.flatnonzero((ranks >= 0) & (ranks < k))
    return {"n": int(len(ranks)), "k": k, "rows": rows.tolist(), "ranks": ranks[rows].astype(int).tolist()}


def full_ranks(hits: dict) -> np.ndarray:
    """Per-row ranks from ``top_ranks`` (a miss gets rank ``k``, outside every cut-off it serves)."""
    out = np.full(hits["n"], hits["k"], dtype=np.int64)
    out[np.asarray(hits["rows"], dtype=np.int64)] = hits["ranks"]
    return out


def summarize(done: dict[str, dict[int, dict]], seeds: list[int], reference: str, resamples: int) -> dict:
    """Bootstrap over the pooled (seed, user) rows of the losses that finished every seed (paired: same rows)."""
    complete = [loss for loss in LOSSES if done[loss] and all(s in done[loss] for s in seeds)]
    if not complete:
        return {}
    values = {
        loss: np.concatenate([ndcg_at(full_ranks(done[loss][s]["hits"]), 10) for s in seeds]) for loss in complete
    }
    return bootstrap(values, resamples, reference=reference)


def stored_runs(path: Path, settings: dict, fresh: bool) -> dict[str, dict[int, dict]]:
    """The runs already in the result at ``path`` by loss and seed (none with ``fresh``)."""
    done: dict[str, dict[int, dict]] = {loss: {} for loss in LOSSES}
    stored = resumable_result(path, settings, fresh, key="settings")
    for loss, entry in (stored or {}).get("losses", {}).items():
        done[loss] = {int(r["seed"]): r for r in entry["runs"]}
    return done


def _main(argv: list[str]) -> None:
    values = key_values(
        argv,
        {
            "recipe": "",
            "budget": "cpu",
            "losses": ",".join(LOSSES),
            "reference": "lml",
            "seeds": "42",
            "steps": 0,
            "name": "",
            "bootstrap": 1000,
            "fresh": "false",
        },
    )
    from benchmarks.run import load_budgets
    from zoo.config import recipe_names

    recipe, budget = str(values["recipe"]), str(values["budget"])
    if recipe not in recipe_names():
        raise ConfigError(f"recipe={recipe or '(missing)'}: expected one of the recipes (python -m zoo.run --list)")
    budgets = load_budgets()
    if budget not in budgets:
        raise ConfigError(f"budget={budget}: expected one of {', '.join(budgets)}")
    losses, seeds = names(values, "losses", choices=LOSSES), integers(values, "seeds", minimum=0)
    reference = names(values, "reference", choices=LOSSES)
    if len(reference) != 1 or not losses:
        raise ConfigError("losses: at least one; reference: one loss (the others are compared with it)")
    steps, resamples = integer(values, "steps", minimum=0), integer(values, "bootstrap", minimum=10)
    name = str(values["name"]) or f"{recipe}_losses_{budget}"
    path = common.RESULTS_DIR / f"{name}.json"
    settings = {"recipe": recipe, "budget": budget, "budget_spec": budgets[budget], "steps": steps}
    os.environ.setdefault("ZOO_DATA_DIR", str(REPO_ROOT.parent / "shared" / "datasets"))
    with locked(path):
        done = stored_runs(path, settings, flag(values, "fresh"))
    load = os.getloadavg()[0]
    for loss in losses:
        for seed in seeds:
            if seed in done[loss]:
                print(f"{loss} seed {seed}: already in {path.name}, skipped", flush=True)
                continue
            run = run_one(recipe, budget, loss, seed, steps, REPO_ROOT / "runs" / "loss_swap")
            print(loss, seed, run["metrics"], f"{run['wall_s']} s", flush=True)
            with locked(path):  # read-merge-write: a second call on other losses or seeds keeps this one's runs
                done = stored_runs(path, settings, False) if path.is_file() else done
                done[loss][seed] = run
                missing = {ls: [s for s in seeds if s not in done[ls]] for ls in losses}
                payload = {
                    "kind": "loss_swap",
                    "settings": settings,
                    "seeds": seeds,
                    "complete": not any(missing.values()),
                    "missing": {ls: m for ls, m in missing.items() if m},
                    "losses": {ls: {"runs": [done[ls][s] for s in sorted(done[ls])]} for ls in LOSSES if done[ls]},
                    "reference": reference[0],
                    "bootstrap": summarize(done, seeds, reference[0], resamples),
                    "bootstrap_resamples": resamples,
                    "load_avg_1m_start": round(load, 2),
                }
                write_result(name, payload, None, common.RESULTS_DIR)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    return cli(_main, __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
