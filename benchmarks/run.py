"""The leaderboard grid: ``python -m benchmarks.run methods=pop,sasrec datasets=beauty,ml100k budget=cpu``.

Each cell (method, dataset) runs the recipe ``<method>_<dataset>`` composed with the budget's overrides
(``benchmarks/budgets.yaml``) through ``zoo.run.run`` in its own subprocess (so peak memory is per cell and a
crash does not end the grid), and writes ``benchmarks/results/<method>__<dataset>__<budget>.json`` with the test
metrics, the resolved config, the code version, hardware, wall time and peak memory. Cells with a valid result
are skipped (the grid resumes where it stopped) unless their recipe or budget changed since; ``force=true``
re-runs them.

Arguments (key=value): ``methods`` and ``datasets`` (comma-separated, required), ``budget`` (default cpu),
``force`` (false), ``logger`` (wandb | csv | tensorboard | none; default: the budget's, else the recipe's),
``dry_run`` (true: list the cells and their state, run nothing), ``results_dir``, ``run_root``.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from zoo.errors import ConfigError, ZooError
from zoo.run import RUN_DIR_ENV

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
BUDGETS_PATH = BENCH_DIR / "budgets.yaml"
PAPERS_PATH = BENCH_DIR / "papers.yaml"  # also names the leaderboard datasets
CELL_KIND = "leaderboard_cell"
WANDB_PROJECT = "zoo-leaderboard"
LOGGERS = ("csv", "tensorboard", "wandb", "none")
VOLATILE_KEYS = ("run_dir", "run_root", "resume", "logger", "recipe")  # keys that do not change a cell's numbers
CELL_ARG = "_cell"  # internal: the grid runs each cell as ``python -m benchmarks.run _cell=METHOD:DATASET ...``


@dataclass
class GridArgs:
    methods: list[str]
    datasets: list[str]
    budget: str = "cpu"
    force: bool = False
    logger: str | None = None
    dry_run: bool = False
    results_dir: Path = BENCH_DIR / "results"
    run_root: Path = REPO_ROOT / "runs" / "leaderboard"


def result_name(method: str, dataset: str, budget: str) -> str:
    """File stem of a cell's result: ``<method>__<dataset>__<budget>``."""
    return f"{method}__{dataset}__{budget}"


def leaderboard_datasets(path: Path = PAPERS_PATH) -> list[str]:
    """The grid's dataset axis, in display order: the ``datasets:`` of ``papers.yaml``."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read {path}: {str(err).splitlines()[0]}") from None
    return list(data.get("datasets") or {})


def recipe_cells() -> dict[tuple[str, str], str]:
    """(method, dataset) -> recipe name, for every recipe named ``<method>_<dataset>`` of a leaderboard dataset."""
    from zoo.config import recipe_names

    datasets = leaderboard_datasets()
    cells = {}
    for name in recipe_names():
        for dataset in datasets:
            method = name.removesuffix(f"_{dataset}")
            if method != name and method:
                cells[(method, dataset)] = name
    return cells


def load_budgets(path: Path = BUDGETS_PATH) -> dict[str, dict]:
    """The budgets of ``budgets.yaml``: name -> {description, overrides, methods, logger, threads, tiny_models}."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read budgets {path}: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ConfigError(f"{path}: expected a mapping of budget name -> settings")
    for name, budget in data.items():
        unknown = set(budget) - {"description", "overrides", "methods", "logger", "threads", "tiny_models"}
        if unknown:
            raise ConfigError(f"{path}: budget '{name}' has unknown keys {sorted(unknown)}")
        threads = budget.get("threads")
        if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
            raise ConfigError(f"{path}: budget '{name}': threads must be a positive integer, got {threads!r}")
    return data


def _override(key: str, value: Any) -> str:
    """One ``dotted.key=value`` string that OmegaConf parses back to ``value`` (strings stay strings)."""
    if isinstance(value, (str, list, dict)):
        return f"{key}={json.dumps(value)}"  # a JSON string is a YAML double-quoted string
    return f"{key}={yaml.safe_dump(value, default_flow_style=True).splitlines()[0]}"


def cell_overrides(
    budgets: dict[str, dict], budget: str, method: str, model_name: str, logger: str | None, run_dir: Path
) -> list[str]:
    """The overrides a cell runs with: the model's own tiny ``test_overrides`` (budgets with ``tiny_models``),
    then budget-wide, per model name and per method overrides; then logger and run dir."""
    spec = budgets[budget]
    overrides = []
    if spec.get("tiny_models"):
        from zoo.registry import MODELS, populate

        populate()
        overrides += list(getattr(MODELS.get(model_name), "test_overrides", ()))
    layers: list[dict] = [spec.get("overrides") or {}]
    per_method = spec.get("methods") or {}
    layers.append(per_method.get(model_name) or {})
    if method != model_name:
        layers.append(per_method.get(method) or {})
    overrides += [_override(k, v) for layer in layers for k, v in layer.items()]
    logger = logger or spec.get("logger")
    if logger:
        if logger not in LOGGERS:
            raise ConfigError(f"unknown logger '{logger}' ({' | '.join(LOGGERS)})")
        overrides.append(_override("logger.name", logger))
        if logger == "wandb":
            overrides += [_override("logger.project", WANDB_PROJECT), _override("logger.group", budget)]
    overrides.append(_override("run_dir", str(run_dir)))
    return overrides


def compose_cell(args: GridArgs, budgets: dict[str, dict], method: str, dataset: str, recipe: str):
    """The resolved config of one cell (``zoo.config.compose`` of the recipe plus the budget's overrides)."""
    from zoo.config import compose, load_recipe

    model_name = (load_recipe(recipe).get("model") or {}).get("name", method)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = args.run_root / args.budget / result_name(method, dataset, args.budget) / stamp
    overrides = cell_overrides(budgets, args.budget, method, model_name, args.logger, run_dir)
    return compose(recipe, overrides), overrides


def finished_result(path: Path, method: str, dataset: str, budget: str) -> dict | None:
    """The record at ``path`` if it is a complete result of this cell (parseable, same cell, test metrics)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    complete = (
        isinstance(record, dict)
        and record.get("kind") == CELL_KIND
        and (record.get("method"), record.get("dataset"), record.get("budget")) == (method, dataset, budget)
        and any(str(k).startswith("test/") for k in (record.get("metrics") or {}))
    )
    return record if complete else None


def _leaf_paths(tree: dict, prefix: str = "") -> list[str]:
    paths = []
    for key, value in tree.items():
        path = f"{prefix}{key}"
        paths += _leaf_paths(value, f"{path}.") if isinstance(value, dict) and value else [path]
    return paths


UNSET = "<unset>"


def _lookup(config: dict, path: str) -> Any:
    node: Any = config
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return UNSET
        node = node[part]
    return node


def settings_of(
    config: dict, recipe: str, overrides: list[str], threads: int | None, defaults: dict | None = None
) -> dict:
    """What a cell's recipe and budget set, read from a resolved ``config``: the value of every key the recipe
    (with its bases) or the budget's overrides name, and the threads. Two runs of a cell with different settings
    are different results; code changes (library defaults) are tracked by the git commit instead. A key that
    ``config`` lacks is read from ``defaults`` where given: a record run before the key joined the schema ran
    without it, which is its default (a new setting is off by default)."""
    from zoo.config import load_recipe

    paths = _leaf_paths(load_recipe(recipe)) + [o.partition("=")[0] for o in overrides]
    kept = sorted(p for p in set(paths) if p.split(".")[0] not in VOLATILE_KEYS)
    values = {p: _lookup(config, p) for p in kept}
    if defaults is not None:
        values = {p: _lookup(defaults, p) if v == UNSET else v for p, v in values.items()}
    return {"config": values, "threads": threads}


def stage_settings(cfg) -> dict:
    """The settings of the recipes a cell trains first as stages (the retriever of Laser and of PALR), read as
    ``settings_of`` reads the cell's own: a change of ``sasrec_ml100k`` makes ``laser_ml100k``'s cell stale too."""
    from omegaconf import OmegaConf

    from zoo.registry import MODELS
    from zoo.stages import RetrieverStage

    model_cls = MODELS.get(cfg.model.name) if cfg.model.get("name") in MODELS else None
    if model_cls is None or "retriever" not in model_cls.stages_for(cfg):
        return {}
    sub = RetrieverStage().retriever_config(cfg)
    overrides = list(cfg.model.get("retriever_overrides") or [])
    return {
        "retriever": {
            "recipe": sub.recipe,
            **settings_of(OmegaConf.to_container(sub, resolve=True), sub.recipe, overrides, None),
        }
    }


def changed_since(commit: str | None, files: list[Path]) -> bool:
    """Whether any of ``files`` differs from its state at git ``commit`` (True when git cannot tell: no commit
    recorded, not a clone, an unknown commit), so a record that cannot be checked is run again."""
    commit = (commit or "").removesuffix("+dirty")  # a run from a dirty tree: checked against its commit
    if not commit or commit == "unknown":
        return True
    try:
        done = subprocess.run(
            ["git", "diff", "--quiet", commit, "--", *map(str, files)], cwd=REPO_ROOT, capture_output=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return True
    return done.returncode != 0


def stages_stale(record: dict, today: dict) -> bool:
    """Whether the stage recipes of a cell (``stage_settings``) changed since its ``record`` was run. A record
    from before stages were recorded is checked against the git history of the stage recipes' files."""
    if not today:
        return False
    if "stages" in record:
        return record["stages"] != today
    from zoo.config import recipe_files

    files = [f for stage in today.values() for f in recipe_files(stage["recipe"])]
    return changed_since(record.get("git_commit"), files)


def epochs_run(run_dir: Path) -> dict[str, int] | None:
    """Training progress read from the run's CSV log (written by the csv and wandb loggers): ``epochs`` = epochs
    that reached validation (an epoch cut short by the time cap does not count), ``steps`` = last logged
    optimiser step + 1 (exact at validation, else at the logging interval). None when nothing was trained."""
    log = run_dir / "logs" / "csv" / "metrics.csv"
    if not log.is_file():
        return None
    with log.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if not any(r.get(k) for k in r if k.startswith("test/"))]
    validated = [int(r["epoch"]) for r in rows if any(r.get(k) for k in r if k.startswith("val/"))]
    if not rows:
        return None
    return {"epochs": 1 + max(validated, default=-1), "steps": 1 + max(int(r["step"]) for r in rows)}


def use_budget_threads(budgets: dict, budget: str) -> None:
    """Set this process's torch threads to the budget's ``threads`` (when it names them)."""
    import torch

    if budgets[budget].get("threads"):
        torch.set_num_threads(int(budgets[budget]["threads"]))


def run_cell(args: GridArgs, method: str, dataset: str) -> Path:
    """Run one cell in this process and write its result JSON; returns the JSON path."""
    import torch
    from omegaconf import OmegaConf

    from benchmarks.common import git_commit, write_result
    from zoo.run import run

    started = time.time()
    commit = git_commit()  # the code the cell runs, not the tree's state when it ends
    load_start = round(os.getloadavg()[0], 2)
    budgets = load_budgets()
    recipe = recipe_cells()[(method, dataset)]
    cfg, overrides = compose_cell(args, budgets, method, dataset, recipe)
    os.environ.pop(RUN_DIR_ENV, None)  # the cell's own run_dir, never one inherited from a parent process
    use_budget_threads(budgets, args.budget)
    metrics = run(cfg)
    payload = {
        "kind": CELL_KIND,
        "method": method,
        "dataset": dataset,
        "budget": args.budget,
        "budget_description": budgets[args.budget].get("description", ""),
        "recipe": recipe,
        "overrides": overrides,
        "command": f"python -m benchmarks.run methods={method} datasets={dataset} budget={args.budget}",
        "metrics": metrics,
        "training": epochs_run(Path(cfg.run_dir)),
        "run_dir": str(cfg.run_dir),
        "budget_threads": budgets[args.budget].get("threads"),
        "load_avg_1m_start": load_start,
        "torch_threads": torch.get_num_threads(),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "stages": stage_settings(cfg),
        "git_commit": commit,
    }
    return write_result(result_name(method, dataset, args.budget), payload, started, directory=args.results_dir)


def _cell_command(args: GridArgs, method: str, dataset: str) -> list[str]:
    command = [sys.executable, "-m", "benchmarks.run", f"{CELL_ARG}={method}:{dataset}", f"budget={args.budget}"]
    command += [f"results_dir={args.results_dir.resolve()}", f"run_root={args.run_root.resolve()}"]
    if args.logger:
        command.append(f"logger={args.logger}")
    if logging.getLogger("zoo").getEffectiveLevel() > logging.INFO:  # -q / log_level= of the grid: its cells too
        command.append(f"log_level={logging.getLevelName(logging.getLogger('zoo').getEffectiveLevel())}")
    return command


def is_stale(args: GridArgs, budgets: dict[str, dict], recipe: str, record: dict) -> bool:
    """Whether a finished cell's ``record`` no longer stands for its recipe under today's files: the settings its
    recipe and budget name (``settings_of``), or those of a stage recipe it trains first (``stage_settings``),
    differ from what the record ran with."""
    from omegaconf import OmegaConf

    from zoo.config import config_schema

    method, dataset = record["method"], record["dataset"]
    cfg, overrides = compose_cell(args, budgets, method, dataset, recipe)
    threads = budgets[args.budget].get("threads")
    today = settings_of(OmegaConf.to_container(cfg, resolve=True), recipe, overrides, threads)
    defaults = OmegaConf.to_container(config_schema(cfg.model, cfg.loss))  # for keys newer than the record
    then = settings_of(record.get("config") or {}, recipe, overrides, record.get("budget_threads"), defaults)
    return today != then or stages_stale(record, stage_settings(cfg))


def plan(args: GridArgs) -> list[tuple[str, str, str]]:
    """Validate the grid and return every cell as (method, dataset, state): todo | done | stale | no recipe.
    A stale cell (``is_stale``) has a result whose recipe, budget or stage-recipe settings differ from today's: it
    is run again."""
    budgets = load_budgets()
    if args.budget not in budgets:
        raise ConfigError(f"unknown budget '{args.budget}'; valid: {', '.join(budgets)}")
    if args.logger is not None and args.logger not in LOGGERS:
        raise ConfigError(f"unknown logger '{args.logger}'; valid: {', '.join(LOGGERS)}")
    cells = recipe_cells()
    valid_methods = sorted({m for m, _ in cells})
    valid_datasets = leaderboard_datasets()
    for kind, asked, valid in (("method", args.methods, valid_methods), ("dataset", args.datasets, valid_datasets)):
        if not asked:
            raise ConfigError(f"no {kind}s given ({kind}s=a,b); valid: {', '.join(valid)}")
        unknown = [name for name in asked if name not in valid]
        if unknown:
            raise ConfigError(f"unknown {kind} '{unknown[0]}'; valid: {', '.join(valid)}")
    grid = []
    for dataset in args.datasets:
        for method in args.methods:
            path = args.results_dir / f"{result_name(method, dataset, args.budget)}.json"
            record = None if args.force else finished_result(path, method, dataset, args.budget)
            if (method, dataset) not in cells:
                state = "no recipe"
            elif record is None:
                state = "todo"
            else:
                state = "stale" if is_stale(args, budgets, cells[(method, dataset)], record) else "done"
            grid.append((method, dataset, state))
    return grid


def run_grid(args: GridArgs) -> int:
    """Run every unfinished cell, one subprocess at a time; returns 1 if any cell failed, else 0."""
    from zoo.progress import duration

    grid = plan(args)
    failed = []
    todo = sum(state in ("todo", "stale") for _, _, state in grid) if not args.dry_run else 0
    done, grid_started = 0, time.time()
    for method, dataset, state in grid:
        label = f"{method} on {dataset} ({args.budget})"
        if state not in ("todo", "stale") or args.dry_run:
            print(f"[{state}] {label}", flush=True)
            continue
        print(f"[run {done + 1}/{todo}] {label}", flush=True)
        started = time.time()
        env = {k: v for k, v in os.environ.items() if k != RUN_DIR_ENV}  # each cell writes its own run dir
        code = subprocess.run(_cell_command(args, method, dataset), cwd=REPO_ROOT, env=env).returncode
        done += 1
        verdict = "ok" if code == 0 else f"FAILED (exit {code})"
        elapsed = time.time() - grid_started
        eta = f", grid ETA {duration(elapsed / done * (todo - done))}" if done < todo else ""
        print(
            f"[{verdict}] {label} in {time.time() - started:.0f} s ({done}/{todo} cells, {duration(elapsed)}{eta})",
            flush=True,
        )
        if code != 0:
            failed.append(label)
    if failed:
        print(f"{len(failed)} cell(s) failed: {'; '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def parse_args(argv: list[str]) -> tuple[GridArgs, tuple[str, str] | None]:
    """Parse ``key=value`` arguments; the second value is the (method, dataset) of an internal cell run."""
    from benchmarks.common import flag, key_values, names

    defaults = GridArgs(methods=[], datasets=[])
    values = key_values(
        argv,
        {
            "methods": "",
            "datasets": "",
            "budget": defaults.budget,
            "force": defaults.force,
            "logger": "",
            "dry_run": defaults.dry_run,
            "results_dir": defaults.results_dir,
            "run_root": defaults.run_root,
            CELL_ARG: "",
        },
    )
    args = GridArgs(
        methods=names(values, "methods"),
        datasets=names(values, "datasets"),
        budget=str(values["budget"]),
        force=flag(values, "force"),
        logger=values["logger"] or None,
        dry_run=flag(values, "dry_run"),
        results_dir=Path(values["results_dir"]),
        run_root=Path(values["run_root"]),
    )
    cell = None
    if values[CELL_ARG]:
        method, _, dataset = values[CELL_ARG].partition(":")
        cell = (method, dataset)
    return args, cell


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(__doc__.strip())
        return 0
    try:
        from zoo.logs import setup_from_args

        args, cell = parse_args(setup_from_args(argv))
        if cell is not None:
            logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
            print(f"result: {run_cell(args, *cell)}")
            return 0
        return run_grid(args)
    except ZooError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
