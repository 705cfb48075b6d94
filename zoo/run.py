"""``python -m zoo.run recipe=NAME [dotted.key=value ...]``: train (if the recipe trains), test, write the run
directory ``<run_root>/<recipe>/<timestamp>/`` with config.yaml, metrics.json, checkpoints and logs.

``python -m zoo.run --help`` (or ``list``) shows the recipes, models, datasets and losses."""

from __future__ import annotations

import logging
import os
import sys
import time
from datetime import datetime
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from zoo.errors import ConfigError, ZooError

RUN_DIR_ENV = "ZOO_RUN_DIR"  # set by the launching process so DDP workers share one run directory


def listing() -> str:
    from zoo.config import recipe_names
    from zoo.registry import LOSSES, MODELS, SOURCES, populate

    populate()
    return "\n".join(
        [
            __doc__.strip(),
            "",
            "recipes:  " + ", ".join(recipe_names()),
            "models:   " + ", ".join(MODELS.names()),
            "datasets: " + ", ".join(SOURCES.names()),
            "losses:   " + ", ".join(LOSSES.names()),
        ]
    )


def parse_args(argv: list[str]) -> tuple[str, list[str]]:
    recipe = None
    overrides = []
    for arg in argv:
        if arg.startswith("recipe="):
            recipe = arg.split("=", 1)[1]
        elif arg.startswith("-"):
            raise ConfigError(f"unknown option '{arg}' (use --help)")
        else:
            overrides.append(arg)
    if not recipe:
        raise ConfigError("missing recipe=NAME (python -m zoo.run list shows them)")
    return recipe, overrides


def resolve_run_dir(cfg: DictConfig) -> Path:
    if cfg.run_dir:  # explicit (a stage's nested run, or a user's choice)
        return Path(cfg.run_dir)
    if os.environ.get(RUN_DIR_ENV):
        return Path(os.environ[RUN_DIR_ENV])
    if cfg.resume:
        resume = Path(cfg.resume)
        run_dir = resume.parent.parent if resume.suffix == ".ckpt" else resume
        if not (run_dir / "config.yaml").is_file():
            raise ConfigError(f"resume={cfg.resume}: no run directory with config.yaml there")
        return run_dir
    base = Path(cfg.run_root) / cfg.recipe
    base.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir, n = base / stamp, 1
    while True:  # claim the directory atomically: two runs started in the same second get different ones
        try:
            run_dir.mkdir()
            return run_dir
        except FileExistsError:
            run_dir, n = base / f"{stamp}-{n}", n + 1


def resume_checkpoint(cfg: DictConfig) -> str | None:
    if not cfg.resume:
        return None
    resume = Path(cfg.resume)
    ckpt = resume if resume.suffix == ".ckpt" else resume / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        raise ConfigError(f"resume={cfg.resume}: no checkpoint at {ckpt}")
    return str(ckpt)


def run(cfg: DictConfig, corpus=None) -> dict[str, float]:
    """Run one resolved config end to end; returns the final test metrics (also written to metrics.json).
    ``corpus`` skips loading the data (a stage passes the corpus it already has)."""
    import lightning as L

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    run_dir = resolve_run_dir(cfg)
    inherited = os.environ.get(RUN_DIR_ENV)
    os.environ[RUN_DIR_ENV] = str(run_dir)  # DDP workers re-run this script and must share the directory
    try:
        return _run_in(cfg, run_dir, corpus)
    finally:
        if inherited is None:
            os.environ.pop(RUN_DIR_ENV, None)
        else:
            os.environ[RUN_DIR_ENV] = inherited


def _run_in(cfg: DictConfig, run_dir: Path, corpus=None) -> dict[str, float]:
    from zoo.io import write_json_atomic
    from zoo.registry import MODELS

    started = time.time()
    model_cls = MODELS.get(cfg.model.name)
    if getattr(model_cls, "standalone", False):
        # a stage that is not a recommender over users (e.g. the RQ-VAE of Semantic IDs): it trains and
        # evaluates itself with a trainer from ``build_trainer`` and returns its final metrics
        _write_config(cfg, run_dir)
        metrics, is_zero = model_cls.run_standalone(cfg, run_dir)
    else:
        metrics, is_zero = _run_recommender(cfg, run_dir, corpus)
    metrics["time/total_s"] = round(time.time() - started, 3)
    if is_zero:
        write_json_atomic(run_dir / "metrics.json", metrics)
        width = max(len(k) for k in metrics)
        print("\n".join(f"{k:<{width}}  {v:.4f}" for k, v in sorted(metrics.items())))
        print(f"run directory: {run_dir}")
    return metrics


def _write_config(cfg: DictConfig, run_dir: Path) -> None:
    from zoo.io import write_text_atomic

    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))


def _run_recommender(cfg: DictConfig, run_dir: Path, corpus=None) -> tuple[dict[str, float], bool]:
    from zoo.build import build
    from zoo.io import write_json_atomic
    from zoo.trainer import build_trainer

    artifacts: dict = {}
    model, datamodule = build(cfg, corpus=corpus, stages=artifacts)
    trainer = build_trainer(cfg, model, run_dir)
    if trainer.is_global_zero:
        _write_config(cfg, run_dir)  # after build: the applied monitor, lengths and candidate lists
        if artifacts:
            write_json_atomic(run_dir / "stages.json", {n: a.summary() for n, a in artifacts.items()})
    ckpt = None
    if cfg.train and model.trainable:
        trainer.fit(model, datamodule=datamodule, ckpt_path=resume_checkpoint(cfg))
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        ckpt = best if best and Path(best).is_file() else None
    trainer.test(model, datamodule=datamodule, ckpt_path=ckpt, verbose=False)
    metrics = dict(model.test_results)
    for name, artifact in artifacts.items():
        metrics[f"stage/{name}/reused"] = float(artifact.reused)
    if trainer.checkpoint_callback is not None and trainer.checkpoint_callback.best_model_score is not None:
        metrics[f"best/{cfg.trainer.monitor}"] = float(trainer.checkpoint_callback.best_model_score)
    return metrics, trainer.is_global_zero


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help", "list"):
        print(listing())
        return 0
    try:
        from zoo.config import compose

        recipe, overrides = parse_args(argv)
        cfg = compose(recipe, overrides)
        run(cfg)
    except ZooError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    return 0


if __name__ == "__main__":
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    sys.exit(main())
