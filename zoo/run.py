"""``python -m zoo.run recipe=NAME [dotted.key=value ...]``: train (if the recipe trains), test, write the run
directory ``<run_root>/<recipe>/<timestamp>/`` with config.yaml, metrics.json, checkpoints and logs.

``python -m zoo.run resume=RUN_DIR [trainer.max_epochs=N ...]`` continues a run from its ``last.ckpt`` with the
config of its ``config.yaml`` (see ``compose_resume``); ``train=false`` evaluates its ``best.ckpt`` (or the
``.ckpt`` named by ``resume=``) and prints its metrics, with other ``eval.*`` settings if given (e.g.
``eval.renormalize=true``); a missing or corrupt checkpoint exits 1 with one line.

``python -m zoo.run recipe=NAME [key=value ...] --print-config`` prints the fully resolved config (the family's
defaults applied: monitor, lengths) and runs nothing; with ``resume=RUN_DIR`` it prints the run's config.

``python -m zoo.run --help`` (or ``list``) shows the recipes, models, datasets and losses."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from datetime import datetime
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from zoo.errors import ConfigError, DataError, ZooError

PRINT_CONFIG = "--print-config"
RUN_DIR_ENV = "ZOO_RUN_DIR"  # set by the launching process so DDP workers share one run directory

# keys a resume may set to other values than the run's config.yaml: where and how long to train, what to show
RESUME_MAY_CHANGE = (
    "recipe",
    "resume",
    "run_dir",
    "run_root",
    "train",
    "trainer.max_epochs",
    "trainer.max_steps",
    "trainer.max_time",
    "trainer.enable_progress_bar",
    "logger.",
    "data.num_workers",
    "data.download",
)


class Stopped(ZooError):
    """The run was stopped by a signal (SIGINT / SIGTERM); exit status 128 + the signal number."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


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


def parse_args(argv: list[str]) -> tuple[str | None, list[str]]:
    """(recipe, overrides); the recipe may be missing when an override is ``resume=``."""
    recipe = None
    overrides = []
    for arg in argv:
        if arg == PRINT_CONFIG:
            continue
        if arg.startswith("recipe="):
            recipe = arg.split("=", 1)[1]
        elif arg.startswith("-"):
            raise ConfigError(f"unknown option '{arg}' (use --help)")
        else:
            overrides.append(arg)
    if not recipe and not any(o.startswith("resume=") and o != "resume=" for o in overrides):
        raise ConfigError("missing recipe=NAME (python -m zoo.run list shows them)")
    return recipe, overrides


def resolved_config_yaml(cfg: DictConfig) -> str:
    """The config a run of ``cfg`` would record, as YAML: the task family's defaults applied (what ``zoo.build``
    fills before loading data; a re-ranker's candidate lists are only known once its stages are resolved)."""
    from zoo.build import apply_defaults
    from zoo.registry import MODELS
    from zoo.tasks import task_of

    model_cls = MODELS.get(cfg.model.name)
    if not getattr(model_cls, "standalone", False):
        apply_defaults(cfg, task_of(model_cls))
    return OmegaConf.to_yaml(cfg, resolve=True)


def resume_run_dir(resume: str) -> Path:
    """The run directory of ``resume=`` (a run directory, or a checkpoint in its ``checkpoints/``)."""
    path = Path(resume)
    run_dir = path.parent.parent if path.suffix == ".ckpt" else path
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"resume={resume}: no run directory with config.yaml there")
    return run_dir


def _recipe_stem(recipe: str) -> str:
    return Path(recipe).stem if recipe.endswith((".yaml", ".yml")) else recipe


def _may_change(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESUME_MAY_CHANGE)


def _leaves(node, prefix: str = "") -> dict:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            out.update(_leaves(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


def config_differences(cfg: DictConfig, saved: DictConfig) -> list[tuple[str, object, object]]:
    """(key, saved value, new value) for every key a resume may not change and ``cfg`` sets otherwise."""
    new = _leaves(OmegaConf.to_container(cfg, resolve=True))
    old = _leaves(OmegaConf.to_container(saved, resolve=True))
    return [
        (key, old.get(key), new.get(key))
        for key in sorted(set(new) | set(old))
        if not _may_change(key) and old.get(key) != new.get(key)
    ]


def _refuse_differences(resume: str, diffs: list) -> None:
    if diffs:
        key, old, new = diffs[0]
        more = f" (and {len(diffs) - 1} more)" if len(diffs) > 1 else ""
        raise ConfigError(
            f"resume={resume}: {key}={new} does not match the run's config.yaml ({key}={old}){more}; a resume "
            f"takes the run's config and may change only {', '.join(k.rstrip('.') for k in RESUME_MAY_CHANGE)} "
            "(and eval.* with train=false)"
        )


def _saved_recipe(run_dir: Path) -> str:
    import yaml

    try:
        saved = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{run_dir / 'config.yaml'}: cannot be read ({str(err).splitlines()[0]})") from None
    return str(saved.get("recipe") or run_dir.parent.name) if isinstance(saved, dict) else run_dir.parent.name


def compose_resume(resume: str, recipe: str | None, overrides: list[str]) -> DictConfig:
    """The config of a resume: the run directory's config.yaml (the recipe and original overrides need not be
    repeated), with ``overrides`` applied. A ``recipe`` other than the run's, or an override that changes a key
    outside ``RESUME_MAY_CHANGE``, is refused (ConfigError)."""
    from zoo.config import compose

    run_dir = resume_run_dir(resume)
    path = str(run_dir / "config.yaml")
    saved_recipe = _saved_recipe(run_dir)
    if recipe and _recipe_stem(recipe) != saved_recipe:
        raise ConfigError(f"resume={resume}: recipe={recipe} does not match the run's recipe '{saved_recipe}'")
    cfg = compose(path, overrides)
    cfg.recipe = saved_recipe
    cfg.resume = resume
    if not any(o.split("=", 1)[0].lstrip("+") == "run_dir" for o in overrides):
        cfg.run_dir = str(run_dir)  # where the run is now: a moved or copied run resumes in place
    check_resume_config(cfg, run_dir)
    return cfg


def check_resume_config(cfg: DictConfig, run_dir: Path) -> None:
    """A config given to ``run`` with ``resume=`` (not composed by ``compose_resume``) must match the run's
    config.yaml, after the family's defaults are applied as ``build`` applies them."""
    import copy

    from zoo.build import apply_defaults
    from zoo.config import compose
    from zoo.registry import MODELS
    from zoo.tasks import task_of

    saved = compose(str(run_dir / "config.yaml"), [])
    saved.recipe = _saved_recipe(run_dir)
    if _recipe_stem(cfg.recipe) != saved.recipe:
        raise ConfigError(f"resume={cfg.resume}: recipe={cfg.recipe} does not match the run's recipe '{saved.recipe}'")
    mine = copy.deepcopy(cfg)
    model_cls = MODELS.get(mine.model.name)
    if not getattr(model_cls, "standalone", False):
        apply_defaults(mine, task_of(model_cls))
    if mine.data.candidates_path is None:  # filled by the build of a re-ranker
        mine.data.candidates_path = saved.data.candidates_path
    diffs = config_differences(mine, saved)
    if not cfg.train:  # evaluating a saved run may use other evaluation settings (ks, beams, beam scoring)
        diffs = [d for d in diffs if not d[0].startswith("eval.")]
    _refuse_differences(cfg.resume, diffs)


def resolve_run_dir(cfg: DictConfig) -> Path:
    if cfg.run_dir:  # explicit (a stage's nested run, or a user's choice)
        return Path(cfg.run_dir)
    if os.environ.get(RUN_DIR_ENV) and os.environ.get("LOCAL_RANK", "0") != "0":
        # a DDP worker that Lightning started: the launching process chose the directory (a stale variable in
        # the shell of a first process never overrides run_root)
        return Path(os.environ[RUN_DIR_ENV])
    if cfg.resume:
        return resume_run_dir(cfg.resume)
    return claim_run_dir(Path(cfg.run_root) / cfg.recipe)


def claim_run_dir(base: Path) -> Path:
    """A new directory ``base/<YYYYmmdd-HHMMSS>[-n]``, created here: the mkdir claims it atomically, so two runs
    started in the same second (two benchmark jobs launched together) get different ones."""
    base = Path(base)
    base.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir, n = base / stamp, 1
    while True:
        try:
            run_dir.mkdir()
            return run_dir
        except FileExistsError:
            run_dir, n = base / f"{stamp}-{n}", n + 1


def resume_checkpoint(cfg: DictConfig, name: str = "last.ckpt") -> str | None:
    """The checkpoint ``resume=`` names: the path itself, or ``checkpoints/<name>`` of a run directory."""
    if not cfg.resume:
        return None
    resume = Path(cfg.resume)
    ckpt = resume if resume.suffix == ".ckpt" else resume / "checkpoints" / name
    if not ckpt.is_file():
        raise DataError(f"resume={cfg.resume}: no checkpoint at {ckpt} (the run stopped before one was written)")
    return str(ckpt)


def read_checkpoint(path: str, model=None) -> dict:
    """Load a checkpoint to check it before a resume touches the run: an unreadable, truncated or foreign file
    (or weights of other shapes than ``model``'s) is a DataError."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, random bytes, empty file, ...
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"checkpoint {path} cannot be read ({reason[:200]}): it is truncated or corrupt") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict) or "global_step" not in ckpt:
        raise DataError(f"checkpoint {path} is not a Lightning checkpoint (no state_dict / global_step)")
    if model is not None:
        own = model.state_dict()
        for key, value in ckpt["state_dict"].items():
            if key in own and hasattr(value, "shape") and tuple(value.shape) != tuple(own[key].shape):
                raise DataError(
                    f"checkpoint {path} does not fit this model: {key} is {tuple(value.shape)} there, "
                    f"{tuple(own[key].shape)} here"
                )
    return ckpt


def training_finished(cfg: DictConfig, ckpt: dict) -> str | None:
    """Why the training of the run saved in ``ckpt`` (its last.ckpt) is over under ``cfg``'s limits, or None."""
    t = cfg.trainer
    epochs = int(ckpt.get("epoch", -1)) + 1  # last.ckpt is written at the end of epoch ckpt["epoch"]
    if t.max_epochs is not None and t.max_epochs >= 0 and epochs >= t.max_epochs:
        return f"{epochs} of trainer.max_epochs={t.max_epochs} epochs trained"
    if t.max_steps is not None and t.max_steps > 0 and int(ckpt["global_step"]) >= t.max_steps:
        return f"{ckpt['global_step']} of trainer.max_steps={t.max_steps} steps trained"
    for key, state in (ckpt.get("callbacks") or {}).items():
        if str(key).startswith("EarlyStopping") and state.get("wait_count", 0) >= max(state.get("patience", 1), 1):
            return f"early stopping ended it at epoch {epochs}"
    if t.max_time:
        return f"trainer.max_time={t.max_time} ended it"
    return None


def run(cfg: DictConfig, corpus=None) -> dict[str, float]:
    """Run one resolved config end to end; returns the final test metrics (also written to metrics.json).
    ``corpus`` skips loading the data (a stage passes the corpus it already has)."""
    import lightning as L

    from zoo.io import discard_failed_run_dir
    from zoo.validate import check_machine

    check_machine(cfg)  # a GPU preset without a GPU, an unwritable run_root: before any directory is claimed
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    inherited = os.environ.get(RUN_DIR_ENV)
    run_dir = resolve_run_dir(cfg)
    created = not (cfg.run_dir or cfg.resume) and int(os.environ.get("LOCAL_RANK", "0")) == 0
    os.environ[RUN_DIR_ENV] = str(run_dir)  # DDP workers re-run this script and must share the directory

    def discard() -> None:  # a run that failed before any checkpoint or result leaves no directory behind
        if created:
            discard_failed_run_dir(run_dir, cfg.run_root)

    try:
        return _run_in(cfg, run_dir, corpus)
    except KeyboardInterrupt:  # SIGINT / SIGTERM outside training (loading, testing)
        discard()
        raise _stopped(run_dir) from None
    except SystemExit:  # Lightning's exit after an interrupted ``trainer.test``
        discard()
        if _signal_seen:
            raise _stopped(run_dir) from None
        raise
    except BaseException:
        discard()
        raise
    finally:
        if inherited is None:
            os.environ.pop(RUN_DIR_ENV, None)
        else:
            os.environ[RUN_DIR_ENV] = inherited


def _run_in(cfg: DictConfig, run_dir: Path, corpus=None) -> dict[str, float]:
    import json

    from zoo.io import write_json_atomic
    from zoo.registry import MODELS

    started = time.time()
    model_cls = MODELS.get(cfg.model.name)
    write = True
    if getattr(model_cls, "standalone", False):
        # a stage that is not a recommender over users (e.g. the RQ-VAE of Semantic IDs): it trains and
        # evaluates itself with a trainer from ``build_trainer`` and returns its final metrics
        if cfg.resume:
            raise ConfigError(f"resume={cfg.resume}: model '{cfg.model.name}' is a stage that cannot be resumed")
        _write_config(cfg, run_dir)
        metrics, is_zero = model_cls.run_standalone(cfg, run_dir)
    else:
        if cfg.resume:
            check_resume_config(cfg, run_dir)
            done = _finished_resume(cfg, run_dir, model_cls)
            if done is not None:
                print(f"run {run_dir} is finished ({done}): nothing to do (trainer.max_epochs=N continues it)")
                return json.loads((run_dir / "metrics.json").read_text())
        metrics, is_zero = _run_recommender(cfg, run_dir, corpus)
        write = not (cfg.resume and not cfg.train)  # evaluating a saved run reports, it does not rewrite
    metrics["time/total_s"] = round(time.time() - started, 3)
    if is_zero:
        if write:
            write_json_atomic(run_dir / "metrics.json", metrics)
        width = max(len(k) for k in metrics)
        print("\n".join(f"{k:<{width}}  {v:.4f}" for k, v in sorted(metrics.items())))
        print(f"run directory: {run_dir}")
    return metrics


def _finished_resume(cfg: DictConfig, run_dir: Path, model_cls) -> str | None:
    """Why resuming this run would do nothing (its metrics.json is written and its training is over), or None."""
    if not cfg.train or not (run_dir / "metrics.json").is_file():
        return None
    if not getattr(model_cls, "trainable", True):
        return "the model does not train"
    ckpt = resume_checkpoint(cfg)
    return training_finished(cfg, read_checkpoint(ckpt))


def _write_config(cfg: DictConfig, run_dir: Path) -> None:
    from zoo.io import write_text_atomic

    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))


def _run_recommender(cfg: DictConfig, run_dir: Path, corpus=None) -> tuple[dict[str, float], bool]:
    from zoo.build import build
    from zoo.inference import BUNDLE, save_bundle
    from zoo.io import write_json_atomic
    from zoo.trainer import build_trainer

    artifacts: dict = {}
    model, datamodule = build(cfg, corpus=corpus, stages=artifacts)
    training = bool(cfg.train and model.trainable)
    resume_ckpt, keep_logs = None, None
    if cfg.resume and training:  # check the checkpoint before anything in the run directory changes
        resume_ckpt = resume_checkpoint(cfg)
        keep_logs = int(read_checkpoint(resume_ckpt, model).get("epoch", -1))
    ckpt = None
    if cfg.resume and not cfg.train:  # evaluate the saved run: its best checkpoint (or the one named)
        best = Path(cfg.resume) / "checkpoints" / "best.ckpt"
        ckpt = resume_checkpoint(cfg, "best.ckpt" if best.is_file() else "last.ckpt")
        read_checkpoint(ckpt, model)
    trainer = build_trainer(cfg, model, run_dir, keep_logs_through_epoch=keep_logs, loggers=cfg.train or not cfg.resume)
    if trainer.is_global_zero and not cfg.resume:  # a resumed run keeps its config.yaml and stages.json
        _write_config(cfg, run_dir)  # after build: the applied monitor, lengths and candidate lists
        if artifacts:
            write_json_atomic(run_dir / "stages.json", {n: a.summary() for n, a in artifacts.items()})
    if trainer.is_global_zero and (not cfg.resume or (cfg.train and not (run_dir / BUNDLE).is_dir())):
        # what zoo.load needs besides the weights: item table, user ids, item counts, the stage artifacts
        save_bundle(run_dir, type(model), cfg, datamodule, artifacts)
    if training:
        _fit(trainer, model, datamodule, resume_ckpt, run_dir)
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        ckpt = best if best and Path(best).is_file() else None
    trainer.test(model, datamodule=datamodule, ckpt_path=ckpt, verbose=False)
    metrics = dict(model.test_results)
    for name, artifact in artifacts.items():
        metrics[f"stage/{name}/reused"] = float(artifact.reused)
    if trainer.checkpoint_callback is not None and trainer.checkpoint_callback.best_model_score is not None:
        metrics[f"best/{cfg.trainer.monitor}"] = float(trainer.checkpoint_callback.best_model_score)
    return metrics, trainer.is_global_zero


# -- stopping on SIGINT / SIGTERM ----------------------------------------------------------------------------
_signal_seen: list[int] = []  # the signals this process received (handlers installed by ``python -m zoo.run``)
_fitting: list = []  # the trainer inside ``trainer.fit``: a signal there stops it at the next batch boundary


def _on_signal(signum, frame) -> None:
    first = not _signal_seen
    _signal_seen.append(signum)
    if _fitting and first:
        # Lightning checks this flag between batches and stops with SIGTERMException: no half-written checkpoint
        _fitting[-1]._signal_connector.received_sigterm = True
        return
    raise KeyboardInterrupt  # outside training (loading data, testing), or a second signal: stop now


def _stopped(run_dir: Path) -> Stopped:
    signum = _signal_seen[-1] if _signal_seen else int(signal.SIGINT)
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.is_file():
        hint = f"resume it with: python -m zoo.run resume={run_dir}"
    else:
        hint = "no checkpoint was written yet: start it again"
    return Stopped(signum, f"run stopped by {signal.Signals(signum).name} ({run_dir}); {hint}")


def _fit(trainer, model, datamodule, ckpt_path: str | None, run_dir: Path) -> None:
    """``trainer.fit``, stopped cleanly by SIGINT / SIGTERM between batches (``Stopped``, exit 130 / 143; Lightning
    itself would exit 1, or 0 on SIGTERM). No checkpoint is written for the epoch cut short: last.ckpt stays the
    one of the last finished epoch, where an exact resume starts."""
    _fitting.append(trainer)
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    except (KeyboardInterrupt, SystemExit):
        if _signal_seen or trainer.received_sigterm or trainer.interrupted:
            if not _signal_seen:
                _signal_seen.append(int(signal.SIGTERM) if trainer.received_sigterm else int(signal.SIGINT))
            raise _stopped(run_dir) from None
        raise
    finally:
        _fitting.remove(trainer)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help", "list"):
        print(listing())
        return 0
    try:
        from zoo.config import compose
        from zoo.logs import setup_from_args

        recipe, overrides = parse_args(setup_from_args(argv))  # log_level=LEVEL, -q / --quiet: zoo.logs
        resume = [o.split("=", 1)[1] for o in overrides if o.startswith("resume=")]
        if resume and resume[-1] not in ("", "null"):
            cfg = compose_resume(resume[-1], recipe, overrides)
        else:
            cfg = compose(recipe, overrides)
        if PRINT_CONFIG in argv:
            print(resolved_config_yaml(cfg), end="")
            return 0
        run(cfg)
    except KeyboardInterrupt:  # before a run directory exists
        signum = _signal_seen[-1] if _signal_seen else int(signal.SIGINT)
        print(f"error: stopped by {signal.Signals(signum).name} before the run started", file=sys.stderr)
        return 128 + signum
    except ZooError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    return 0


if __name__ == "__main__":
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    sys.exit(main())
