"""UEM task 1 at the ``cpu`` leaderboard budget with and without the zoo's additions that target the collapse of its
soft prompts (``benchmarks/uem_probe.py``): the title-alignment term (``model.align_weight``), the user slot
(``model.user_slot``) and the user bias on the title tokens' logits (``model.user_bias``). For each dataset and arm: the
test metrics of the run (every test user), its training steps, and the probe of its best checkpoint (does the LM read
the soft prompts; for the aligned arms, the test NDCG@10 of the alignment term's own ranking beside most-popular).

    nohup python -m benchmarks.uem_alignment datasets=ml100k,sports [arms=cell,align,align_slot,align_bias]
        [name=uem_alignment] > /tmp/uem_alignment.log 2>&1 &

Arms: ``cell`` is the leaderboard cell itself (the run directory its result file names; not re-run: since the recipes
ship the winning settings below, it is one of the other arms again). Every other arm starts from the paper's module
(``zoo.models.uem.PAPER_MODULE``: 8 resampling queries, none of the zoo's additions), as the recipes were when these
arms were measured; ``align`` adds ``model.align_weight=1``, ``align_slot`` adds ``model.user_slot=true`` to that,
``align_bias`` adds ``model.user_bias=true`` to it instead; ``per_item`` gives the LM one soft prompt per history item
(50) instead of the 8 resampled queries, ``per_item_align`` adds the alignment term to that. ``per_item_align_msl`` and
``per_item_align_ats`` train that with MSL / MSL + ATS instead of LML, ``per_item_align_36min`` for 36 minutes instead
of 12, and ``per_item_align_cosine`` / ``per_item_align_cosine_lr3e-3`` with a cosine learning rate (100 warm-up steps,
0 at step 1,700) from 1e-3 / 3e-3 instead of the constant 1e-3 (their last checkpoint is tested too: validation runs
every 302 steps, so it does not see the end of the decay). ``per_item_align_prior`` adds the alignment term's item
log-probability to the beam scores (``eval.prior_weight=4``, in validation and test alike), and
``per_item_align_pop_prior`` lets that term also weigh each item's log training-part count (``model.align_popularity``),
and ``per_item_align_text_pop_prior`` takes the term's items from their sentence-encoder vectors
(``model.align_items=text``) with w = 16; ``benchmarks.uem_prior`` then chooses the weight on other validation users.
Each trained arm is the cell's run (``benchmarks.run.cell_overrides``: the budget's overrides, 12 minutes at 1 thread)
with ``PAPER_MODULE`` and then the arm's overrides, under ``runs/uem_alignment/<dataset>/<arm>/``. An arm whose
directory already holds a finished run (``metrics.json``) is read, not trained again, so an interrupted call resumes at
arm granularity. The JSON (``benchmarks/results/<name>.json``) is rewritten after every arm. Run it alone: the cells are
time-capped.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from benchmarks import common
from benchmarks.common import cli, key_values, names, write_result
from zoo.errors import ConfigError
from zoo.models.uem import PAPER_MODULE

REPO_ROOT = Path(__file__).resolve().parents[1]
# per_item_align with a learning rate that warms up for 100 steps and decays to 0 at step 1,700 (what fits in the
# cell's 12 minutes beside a second job), instead of the recipe's constant rate
COSINE = [
    "model.tokens=per_item",
    "model.align_weight=1.0",
    "optim.scheduler=cosine",
    "optim.warmup_steps=100",
    "trainer.max_steps=1700",
]
ARMS = {
    "cell": None,
    "align": ["model.align_weight=1.0"],
    "align_slot": ["model.align_weight=1.0", "model.user_slot=true"],
    "align_bias": ["model.align_weight=1.0", "model.user_bias=true"],
    "per_item": ["model.tokens=per_item"],
    "per_item_align": ["model.tokens=per_item", "model.align_weight=1.0"],
    "per_item_align_msl": ["model.tokens=per_item", "model.align_weight=1.0", "loss.name=msl"],
    "per_item_align_ats": ["model.tokens=per_item", "model.align_weight=1.0", "loss.name=msl_ats"],
    "per_item_align_36min": ["model.tokens=per_item", "model.align_weight=1.0", "trainer.max_time=00:00:36:00"],
    "per_item_align_cosine": [*COSINE, "optim.lr=0.001"],
    "per_item_align_cosine_lr3e-3": [*COSINE, "optim.lr=0.003"],
    # beam scores plus 4 x the alignment term's item log-probability (benchmarks/uem_prior.py: the weight its tuning
    # users chose on MovieLens-100K), in validation (checkpoint selection) and test alike
    "per_item_align_prior": ["model.tokens=per_item", "model.align_weight=1.0", "eval.prior_weight=4"],
    # per_item_align_prior whose alignment term also weighs each item's log training-part count (a learned weight)
    "per_item_align_pop_prior": [
        "model.tokens=per_item",
        "model.align_weight=1.0",
        "model.align_popularity=true",
        "eval.prior_weight=4",
    ],
    # per_item_align_pop_prior with the term's items as a learned map of their sentence-encoder vectors (title,
    # categories, brand, ...) instead of their title tokens, and the prior at 16 in validation
    "per_item_align_text_pop_prior": [
        "model.tokens=per_item",
        "model.align_weight=1.0",
        "model.align_items=text",
        "model.align_popularity=true",
        "eval.prior_weight=16",
    ],
}
BUDGET = "cpu"


def finished_run(folder: Path) -> Path | None:
    """The newest run directory under ``folder`` with a metrics.json, or None."""
    done = sorted(d for d in folder.glob("*") if (d / "metrics.json").is_file()) if folder.is_dir() else []
    return done[-1] if done else None


def cell_run(dataset: str) -> Path:
    """The run directory of the ``uem`` leaderboard cell of ``dataset`` at the budget."""
    path = common.RESULTS_DIR / f"uem__{dataset}__{BUDGET}.json"
    if not path.is_file():
        raise ConfigError(f"{path} is missing: run python -m benchmarks.run methods=uem datasets={dataset} first")
    run_dir = Path(json.loads(path.read_text())["run_dir"])
    if not (run_dir / "metrics.json").is_file():
        raise ConfigError(f"{run_dir} (the cell's run, named by {path.name}) is not on this machine")
    return run_dir


def train_arm(dataset: str, arm: str, run_root: Path) -> Path:
    """The cell's run of ``uem_<dataset>`` with the arm's overrides; its run directory."""
    from benchmarks.run import cell_overrides, load_budgets, use_budget_threads
    from zoo.config import compose
    from zoo.run import claim_run_dir, run

    budgets = load_budgets()
    run_dir = claim_run_dir(run_root / dataset / arm)
    use_budget_threads(budgets, BUDGET)
    arm_overrides = [*PAPER_MODULE, *ARMS[arm]]
    run(compose(f"uem_{dataset}", cell_overrides(budgets, BUDGET, "uem", "uem", None, run_dir) + arm_overrides))
    return run_dir


def arm_record(arm: str, run_dir: Path) -> dict:
    from benchmarks.run import epochs_run
    from benchmarks.uem_probe import measure

    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {
        "overrides": ARMS[arm] or [],
        "run_dir": str(run_dir),
        "test": common.cutoff_metrics(metrics),
        "best_val_ndcg@10": metrics.get("best/val/ndcg@10"),
        "training": epochs_run(run_dir),
        "wall_s": metrics.get("time/total_s"),  # zoo.run's: training and test
        "probe": {k: v for k, v in measure(run_dir).items() if k not in ("run", "recipe", "model")},
        **({"last_checkpoint_test": last_checkpoint_test(run_dir)} if stops_at_a_step(arm) else {}),
    }


def stops_at_a_step(arm: str) -> bool:
    """Whether the arm trains to a step count (a schedule that ends there) rather than to the time cap."""
    return any(o.startswith("trainer.max_steps=") for o in ARMS[arm] or [])


def last_checkpoint_test(run_dir: Path) -> dict:
    """The test metrics of the run's last checkpoint (the end of its schedule, which validation may not have seen:
    it runs every epoch of 302 steps)."""
    return common.retest(run_dir / "checkpoints" / "last.ckpt")


def _main(argv: list[str]) -> None:
    args = key_values(argv, {"datasets": "ml100k,sports", "arms": ",".join(ARMS), "name": "uem_alignment"})
    datasets, arms = names(args, "datasets"), names(args, "arms", choices=list(ARMS))
    if not args["name"]:
        raise ConfigError("name must not be empty")
    started = time.time()
    torch.set_num_threads(1)
    path = common.RESULTS_DIR / f"{args['name']}.json"
    result = json.loads(path.read_text()) if path.is_file() else {}
    found: dict = result.get("datasets", {})
    for dataset in datasets:
        for arm in arms:
            if arm in found.get(dataset, {}):
                print(f"{dataset} {arm}: already in {path.name}", flush=True)
                continue
            if arm == "cell":
                run_dir = cell_run(dataset)
            else:
                run_dir = finished_run(REPO_ROOT / "runs" / "uem_alignment" / dataset / arm)
                if run_dir is None:
                    run_dir = train_arm(dataset, arm, REPO_ROOT / "runs" / "uem_alignment")
            found.setdefault(dataset, {})[arm] = arm_record(arm, run_dir)
            print(dataset, arm, found[dataset][arm]["test"].get("test/ndcg@10"), flush=True)
            payload = {
                "what": "UEM task 1 at the cpu budget: the cell, the zoo's additions, per-item prompts",
                "budget": BUDGET,
                "arms": {a: ARMS[a] or "the leaderboard cell" for a in ARMS},
                "datasets": found,
            }
            write_result(args["name"], payload, started, common.RESULTS_DIR)


def main(argv: list[str] | None = None) -> int:
    return cli(_main, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
