"""The one optimizer factory and the learning-rate schedules (``transformers``' schedule functions), shared by every
LightningModule of the zoo (methods and stages such as the RQ-VAE).

Schedules (``optim.scheduler``), stepped once per optimizer step, ``w`` = ``optim.warmup_steps``:

* ``none``: constant;
* ``inverse_sqrt``: linear warm-up from 0 over ``w`` steps, then ``sqrt(w / step)`` (T5 / TIGER);
* ``cosine``: linear warm-up, then half a cosine from 1 to 0 at the trainer's last step;
* ``linear``: linear warm-up, then linear decay to 0 at the trainer's last step.
"""

from __future__ import annotations

import torch
from transformers import (
    get_cosine_schedule_with_warmup,
    get_inverse_sqrt_schedule,
    get_linear_schedule_with_warmup,
)

from zoo.errors import ConfigError

OPTIMIZERS = ("adam", "adamw", "adagrad", "sgd")
SCHEDULERS = ("none", "inverse_sqrt", "cosine", "linear")


def build_optimizer(params, name: str, lr: float, weight_decay: float = 0.0, betas=(0.9, 0.999)):
    name = name.lower()
    if name in ("adam", "adamw"):
        cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        return cls(params, lr=lr, weight_decay=weight_decay, betas=tuple(betas))
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=0.9)
    raise ConfigError(f"unknown optimizer '{name}' ({' | '.join(OPTIMIZERS)})")


def build_scheduler(optimizer, kind: str, warmup_steps: int, total_steps: int):
    """A ``LambdaLR`` of ``transformers``' schedules, or None for ``none``."""
    warmup = max(int(warmup_steps), 0)
    total = max(int(total_steps), 1)
    if kind == "none":
        return None
    if kind == "inverse_sqrt":
        return get_inverse_sqrt_schedule(optimizer, num_warmup_steps=warmup, timescale=max(warmup, 1))
    if kind == "cosine":
        return get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=warmup, num_training_steps=total)
    if kind == "linear":
        return get_linear_schedule_with_warmup(optimizer, num_warmup_steps=warmup, num_training_steps=total)
    raise ConfigError(f"unknown optim.scheduler '{kind}' ({' | '.join(SCHEDULERS)})")


def configure(module, opt_cfg, params=None):
    """What ``LightningModule.configure_optimizers`` returns for ``opt_cfg`` (an ``optim:`` section)."""
    params = [p for p in (params if params is not None else module.parameters()) if p.requires_grad]
    betas = opt_cfg.get("betas", (0.9, 0.999))
    optimizer = build_optimizer(params, opt_cfg.name, opt_cfg.lr, opt_cfg.weight_decay, betas)
    trainer = module._trainer
    decays_to_zero = opt_cfg.scheduler in ("cosine", "linear")
    total = int(trainer.estimated_stepping_batches) if trainer is not None and decays_to_zero else 1
    scheduler = build_scheduler(optimizer, opt_cfg.scheduler, opt_cfg.get("warmup_steps", 0), total)
    if scheduler is None:
        return optimizer
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
