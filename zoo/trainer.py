"""Build the Lightning Trainer from ``trainer:`` / ``logger:`` config: presets, loggers, checkpoints."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger

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


def build_loggers(cfg, run_dir: Path) -> list[Logger]:
    name = cfg.logger.name
    if name == "none":
        return []
    if name == "csv":
        return [CSVLogger(save_dir=str(run_dir), name="logs", version="csv")]
    if name == "tensorboard":
        return [TensorBoardLogger(save_dir=str(run_dir), name="logs", version="tensorboard")]
    if name == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        return [
            CSVLogger(save_dir=str(run_dir), name="logs", version="csv"),
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


def build_trainer(cfg, model, run_dir: Path) -> L.Trainer:
    t = cfg.trainer
    hw = resolved_trainer_settings(t)
    callbacks = [
        ModelCheckpoint(
            dirpath=str(run_dir / "checkpoints"),
            filename="best",
            monitor=t.monitor,
            mode=t.monitor_mode,
            save_last=True,
            save_top_k=1,
            enable_version_counter=False,
        )
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
        logger=build_loggers(cfg, run_dir),
        callbacks=callbacks,
        default_root_dir=str(run_dir),
        use_distributed_sampler=False,  # the DataModule shards itself (evaluation without duplicates)
        enable_model_summary=False,
        **limits,
    )
