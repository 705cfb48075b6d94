"""Value checks of a composed config, run by ``zoo.config.compose`` before any run directory exists, so that a
meaningless value (a batch size of 0, a negative learning rate, a precision Lightning does not know, a monitor the
model never logs) is one ``ConfigError`` line, not a traceback mid-run. What depends on the machine (a GPU preset
without a GPU, an unwritable run_root) is ``check_machine``, run by ``zoo.run`` before it claims a run directory.

The schema (``zoo.config``) checks keys and types; this module checks ranges and cross-field rules."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from zoo.errors import ConfigError

# the precision strings / numbers ``lightning.Trainer(precision=...)`` accepts (lightning.fabric.connector)
PRECISIONS = (
    "transformer-engine",
    "transformer-engine-float16",
    "16-true",
    "16-mixed",
    "bf16-true",
    "bf16-mixed",
    "32-true",
    "64-true",
    "64",
    "32",
    "16",
    "bf16",
)
MAX_TIME = re.compile(r"^\d+:\d{1,2}:\d{1,2}:\d{1,2}$")  # DD:HH:MM:SS, as Lightning's Timer parses it
RANKING_METRICS = ("recall", "hr", "ndcg", "mrr", "precision")
GENERATION_METRICS = ("invalid_rate", "duplicate_rate")  # generative families also log these
GPU_PRESETS = ("ddp", "fsdp")
GPU_ACCELERATORS = ("gpu", "cuda")
# model / loss integer fields that size a layer: 0 gives a model that cannot learn (when their default is >= 1)
SIZE_FIELD = re.compile(r"(_size|_dim|hidden|_layers|_heads)$|^(d_model|d_kv|d_ff|dim)$")

# key -> (lowest allowed value, what it means); ``None`` values are left alone (they mean "the default")
AT_LEAST = {
    "data.batch_size": 1,
    "data.eval_batch_size": 1,
    "data.max_len": 1,
    "data.num_workers": 0,
    "data.k_core": 0,
    "data.min_seq_len": 0,
    "data.train_len": 0,
    "data.eval_candidates": 0,
    "trainer.accumulate_grad_batches": 1,
    "trainer.check_val_every_n_epoch": 1,
    "trainer.log_every_n_steps": 1,
    "trainer.num_nodes": 1,
    "trainer.early_stopping_patience": 0,
    "optim.warmup_steps": 0,
    "optim.weight_decay": 0,
    "eval.item_chunk_size": 0,
    "eval.num_beams": 1,
}


def _fail(key: str, value: Any, why: str) -> None:
    raise ConfigError(f"invalid {key}={value!r}: {why}")


def check_values(cfg: DictConfig) -> None:
    """Range and cross-field checks of every section; ConfigError naming the first bad key."""
    for key, low in AT_LEAST.items():
        value = OmegaConf.select(cfg, key)
        if value is not None and value < low:
            _fail(key, value, f"must be >= {low}")
    _check_trainer(cfg.trainer)
    _check_optim(cfg.optim)
    ks = list(cfg.eval.ks)
    if not ks or any(k < 1 for k in ks):
        _fail("eval.ks", ks, "must be a non-empty list of cut-offs >= 1")
    for section in ("model", "loss"):
        _check_model_fields(section, cfg.get(section))


def _check_trainer(t: DictConfig) -> None:
    bounded = (t.max_steps is not None and t.max_steps > 0) or bool(t.max_time)
    if t.max_epochs == -1:
        if not bounded:
            _fail("trainer.max_epochs", -1, "-1 (train without an epoch limit) needs trainer.max_steps > 0")
    elif t.max_epochs < 1:
        _fail("trainer.max_epochs", t.max_epochs, "must be >= 1 (or -1 with trainer.max_steps > 0)")
    if t.max_steps is not None and t.max_steps != -1 and t.max_steps < 1:
        _fail("trainer.max_steps", t.max_steps, "must be >= 1, or -1 for no step limit")
    for key in ("limit_train_batches", "limit_val_batches", "limit_test_batches"):
        value = t[key]
        if value is None:
            continue
        if value < 0 or (value > 1 and not float(value).is_integer()):
            _fail(f"trainer.{key}", value, "must be a fraction in [0, 1] or a whole number of batches")
    if t.precision is not None and str(t.precision) not in PRECISIONS:
        _fail("trainer.precision", t.precision, f"valid: {', '.join(PRECISIONS)}")
    if t.max_time is not None and not MAX_TIME.match(str(t.max_time)):
        _fail("trainer.max_time", t.max_time, "expected DD:HH:MM:SS, e.g. 00:12:00:00")
    if t.gradient_clip_val is not None and t.gradient_clip_val < 0:
        _fail("trainer.gradient_clip_val", t.gradient_clip_val, "must be >= 0")


def _check_optim(o: DictConfig) -> None:
    if not o.lr > 0:
        _fail("optim.lr", o.lr, "must be > 0")
    betas = list(o.betas)
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        _fail("optim.betas", betas, "must be two values in [0, 1), e.g. [0.9, 0.999]")


def _check_model_fields(section: str, values: Any) -> None:
    """Generic checks of a model / loss section: every ``*dropout*`` number in [0, 1); every layer size >= 1."""
    if not isinstance(values, DictConfig):
        return
    import dataclasses

    object_type = OmegaConf.get_type(values)
    default_of = {}
    if object_type is not None and dataclasses.is_dataclass(object_type):
        default_of = {f.name: f.default for f in dataclasses.fields(object_type)}
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if "dropout" in str(name) and not 0 <= value < 1:
            _fail(f"{section}.{name}", value, "a dropout probability must be in [0, 1)")
        default = default_of.get(name)
        if (
            isinstance(value, int)
            and SIZE_FIELD.search(str(name))
            and isinstance(default, int)
            and not isinstance(default, bool)
            and default >= 1
            and value < 1
        ):
            _fail(f"{section}.{name}", value, "a layer size must be >= 1")


def check_machine(cfg: DictConfig) -> None:
    """What depends on the machine a config runs on, checked by ``zoo.run`` before it claims a run directory (a
    config for a GPU machine still composes on a CPU one): a GPU preset without a GPU, an unwritable run_root."""
    _check_hardware(cfg.trainer)
    check_run_root(cfg)


def _check_hardware(t: DictConfig) -> None:
    wants_gpu = t.preset in GPU_PRESETS and t.accelerator in (None, *GPU_ACCELERATORS)
    wants_gpu = wants_gpu or t.accelerator in GPU_ACCELERATORS
    if not wants_gpu:
        return
    import torch

    if not torch.cuda.is_available():
        asked = t.accelerator in GPU_ACCELERATORS
        what = f"trainer.accelerator={t.accelerator}" if asked else f"trainer.preset={t.preset}"
        raise ConfigError(
            f"{what} needs a GPU and there is no GPU here (torch.cuda.is_available() is False); "
            "use trainer.preset=cpu or ddp_cpu"
        )


def allowed_monitors(model_cls, ks) -> list[str]:
    """The metric names a model of ``model_cls``'s task family logs (``trainer.monitor`` must be one)."""
    from zoo.tasks import task_of

    task = task_of(model_cls)
    names = ["train/loss", *getattr(model_cls, "logged_metrics", ())]  # a model may declare more
    if task.ranking:
        names += [f"val/{m}@{k}" for m in RANKING_METRICS for k in ks]
        if task.name == "generative":
            names += [f"val/{m}" for m in GENERATION_METRICS]
    else:
        names += [f"val/{m}" for m in task.columns]  # ctr: auc, logloss; multilabel: f1, micro_f1, macro_f1
    return names


def check_monitor(cfg: DictConfig, model_cls) -> None:
    """``trainer.monitor`` (when set) names a metric the model's family logs at validation."""
    monitor = cfg.trainer.monitor
    if monitor is None or getattr(model_cls, "standalone", False):  # a standalone stage sets its own monitor
        return
    valid = allowed_monitors(model_cls, list(cfg.eval.ks))
    if monitor not in valid:
        from zoo.registry import nearest

        raise ConfigError(
            f"invalid trainer.monitor={monitor!r}: model '{cfg.model.name}' does not log it; nearest: "
            f"{nearest(monitor, valid)}"
        )


def writable_dir(path: Path) -> str | None:
    """Why ``path`` cannot be (created as) a writable directory, or None when it can."""
    path = Path(path).expanduser()
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            return "no existing parent directory"
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is not a directory"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable"
    return None


def check_run_root(cfg: DictConfig) -> None:
    """A new run directory will be created under ``run_root``: refuse one that cannot be written."""
    if cfg.run_dir or cfg.resume or os.environ.get("ZOO_RUN_DIR"):
        return
    why = writable_dir(Path(cfg.run_root))
    if why:
        raise ConfigError(f"invalid run_root={cfg.run_root!r}: cannot create run directories there ({why})")
