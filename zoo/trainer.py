"""Build the Lightning Trainer from ``trainer:`` / ``logger:`` config: presets, loggers, checkpoints.

Checkpoints: ``checkpoints/best.ckpt`` (best ``trainer.monitor``) and ``checkpoints/last.ckpt``, written at the end
of every training epoch with the RNG states of that moment (:class:`RNGState`), so a resumed run continues exactly
as an uninterrupted one would. On resume the CSV log keeps the rows of the epochs the checkpoint covers and appends
(:class:`ResumableCSVLogger`)."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.plugins.io import TorchCheckpointIO

from zoo.errors import ConfigError

PRESETS: dict[str, dict] = {
    "cpu": {"accelerator": "cpu", "devices": 1, "strategy": "auto", "precision": "32-true"},
    "ddp": {"accelerator": "gpu", "devices": "auto", "strategy": "ddp", "precision": "bf16-mixed"},
    "ddp_cpu": {"accelerator": "cpu", "devices": 2, "strategy": "ddp", "precision": "32-true"},
    "fsdp": {"accelerator": "gpu", "devices": "auto", "strategy": "fsdp", "precision": "bf16-mixed"},
}


def resolved_trainer_settings(tcfg) -> dict:
    """The preset's values for every hardware field the user left null."""
    if tcfg.preset not in PRESETS:
        raise ConfigError(f"unknown trainer.preset '{tcfg.preset}' ({' | '.join(PRESETS)})")
    preset = PRESETS[tcfg.preset]
    return {key: (tcfg[key] if tcfg[key] is not None else preset[key]) for key in preset}


def _strategy(name: str, model):
    if name == "fsdp":
        from lightning.pytorch.strategies import FSDPStrategy

        wrap = getattr(model, "fsdp_wrap_modules", lambda: None)()
        return FSDPStrategy(auto_wrap_policy=set(wrap) if wrap else None)
    return name


class RNGState(Callback):
    """Puts the python, numpy and torch (and CUDA) RNG states in every checkpoint and restores them when a fit
    resumes from it. ``last.ckpt`` is written at the end of an epoch, after which an uninterrupted run draws nothing
    until the next epoch's train iterator (its seed) and batches; a resumed fit restores the states when it loads
    the checkpoint, and draws nothing either until the same iterator (Lightning isolates the sanity check's RNG),
    so epoch k+1 sees the same random numbers. Stored as tensors and plain values: the checkpoint still loads with
    ``weights_only=True``."""

    def state_dict(self) -> dict:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        state = {
            "python": random.getstate(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos)},
            "numpy_gauss": [int(has_gauss), float(gauss)],
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        if not state_dict:
            return
        version, internal, gauss = state_dict["python"]
        random.setstate((version, tuple(internal), gauss))
        n = state_dict["numpy"]
        has_gauss, cached = state_dict["numpy_gauss"]
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], has_gauss, cached))
        torch.set_rng_state(state_dict["torch"])
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written beside their path and renamed onto it: a run killed while saving keeps the previous
    last.ckpt whole (Lightning writes in place, so a kill mid-write would leave a truncated file)."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        from zoo.io import atomic_path

        with atomic_path(path) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options=storage_options)


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer deletes an existing metrics.csv; this one keeps its rows of epochs up to
    ``keep_through_epoch`` (the epochs the resumed checkpoint covers: rows of an epoch cut short are dropped,
    that epoch is trained again) and appends after them."""

    def __init__(self, log_dir: str, keep_through_epoch: int) -> None:
        self.keep_through_epoch = keep_through_epoch
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        with open(path, newline="") as file:
            reader = csv.DictReader(file)
            header = list(reader.fieldnames or [])
            rows = [r for r in reader if not r.get("epoch") or int(float(r["epoch"])) <= self.keep_through_epoch]
        from zoo.io import atomic_path

        with atomic_path(path) as tmp, open(tmp, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=header)
            writer.writeheader()
            writer.writerows(rows)
        self.metrics_keys = sorted(header)


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` that, given ``keep_through_epoch`` (a resume), keeps the old rows and appends."""

    def __init__(self, *args, keep_through_epoch: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._keep_through_epoch = keep_through_epoch

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is not None:
            return self._experiment
        if self._keep_through_epoch is None:
            return super().experiment
        self._fs.makedirs(self.root_dir, exist_ok=True)
        self._experiment = _AppendingWriter(self.log_dir, self._keep_through_epoch)
        return self._experiment


def build_loggers(cfg, run_dir: Path, keep_through_epoch: int | None = None) -> list[Logger]:
    """The configured loggers; ``keep_through_epoch`` (a resume from the end of that epoch) makes the CSV log
    keep its rows up to that epoch and append."""
    name = cfg.logger.name

    def csv_logger() -> CSVLogger:
        return ResumableCSVLogger(
            save_dir=str(run_dir), name="logs", version="csv", keep_through_epoch=keep_through_epoch
        )

    if name == "none":
        return []
    if name == "csv":
        return [csv_logger()]
    if name == "tensorboard":
        return [TensorBoardLogger(save_dir=str(run_dir), name="logs", version="tensorboard")]
    if name == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        return [
            csv_logger(),
            WandbLogger(
                project=cfg.logger.project,
                group=cfg.logger.group,
                name=f"{cfg.recipe}-{run_dir.name}",
                save_dir=str(run_dir),
                offline=cfg.logger.offline,
            ),
        ]
    raise ConfigError(f"unknown logger.name '{name}' (csv | tensorboard | wandb | none)")


def batch_limit(value: float) -> int | float:
    """A ``trainer.limit_*_batches`` value as Lightning reads it. The schema types the limits as floats, so
    "limit_val_batches=1" arrives as 1.0, which Lightning reads as 100%: a whole number >= 1 means that many
    batches (a fraction < 1 stays a fraction)."""
    return int(value) if float(value).is_integer() and value >= 1 else value


def build_trainer(
    cfg, model, run_dir: Path, keep_logs_through_epoch: int | None = None, loggers: bool = True
) -> L.Trainer:
    """The Trainer of ``cfg``. ``keep_logs_through_epoch``: a resume (the CSV log appends); ``loggers=False``:
    no logger (evaluating a finished run without touching its logs)."""
    t = cfg.trainer
    hw = resolved_trainer_settings(t)
    callbacks = [
        ModelCheckpoint(  # first: ``trainer.checkpoint_callback`` is this one
            dirpath=str(run_dir / "checkpoints"),
            filename="best",
            monitor=t.monitor,
            mode=t.monitor_mode,
            save_top_k=1,
            enable_version_counter=False,
        ),
        # last.ckpt at the end of every training epoch (Lightning's save_last writes it only in a step where the
        # monitored checkpoint was saved, so it would lag behind after an epoch without improvement)
        ModelCheckpoint(
            dirpath=str(run_dir / "checkpoints"),
            filename="last",
            monitor=None,
            save_top_k=1,
            every_n_epochs=1,
            save_on_train_epoch_end=True,
            enable_version_counter=False,
        ),
        RNGState(),
    ]
    if t.early_stopping_patience > 0:
        callbacks.append(EarlyStopping(monitor=t.monitor, mode=t.monitor_mode, patience=t.early_stopping_patience))
    if t.enable_progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=20))
    limits = {
        k: batch_limit(t[k])
        for k in ("limit_train_batches", "limit_val_batches", "limit_test_batches")
        if t[k] is not None
    }
    return L.Trainer(
        accelerator=hw["accelerator"],
        devices=hw["devices"],
        strategy=_strategy(hw["strategy"], model),
        precision=hw["precision"],
        num_nodes=t.num_nodes,
        max_epochs=t.max_epochs,
        max_steps=t.max_steps,
        max_time=t.max_time,
        gradient_clip_val=t.gradient_clip_val,
        accumulate_grad_batches=t.accumulate_grad_batches,
        check_val_every_n_epoch=t.check_val_every_n_epoch,
        log_every_n_steps=t.log_every_n_steps,
        enable_progress_bar=t.enable_progress_bar,
        deterministic=t.deterministic,
        logger=build_loggers(cfg, run_dir, keep_logs_through_epoch) if loggers else False,
        callbacks=callbacks,
        default_root_dir=str(run_dir),
        use_distributed_sampler=False,  # the DataModule shards itself (evaluation without duplicates)
        enable_model_summary=False,
        plugins=[AtomicCheckpointIO()] if hw["strategy"] in ("auto", "ddp") else None,
        **limits,
    )
