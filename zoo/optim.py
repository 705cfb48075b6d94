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


def param_groups(module, lr: float, lr_scale) -> list[dict]:
    """The trainable parameters of ``module`` in optimizer groups by ``optim.lr_scale`` (parameter-name prefix ->
    learning-rate multiplier; the longest matching prefix wins, the rest keep ``lr``). A prefix that names no
    trainable parameter is a ConfigError."""
    scales = {str(k): float(v) for k, v in dict(lr_scale).items()}
    bad = {k: v for k, v in scales.items() if not v > 0}
    if bad:
        raise ConfigError(f"optim.lr_scale multipliers must be > 0, got {bad}")
    groups: dict[float, list] = {}
    used = set()
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        match = max((p for p in scales if name == p or name.startswith(p + ".")), key=len, default=None)
        used.add(match)
        groups.setdefault(scales[match] if match is not None else 1.0, []).append(param)
    unused = sorted(set(scales) - used)
    if unused:
        raise ConfigError(f"optim.lr_scale: no trainable parameter is named '{unused[0]}' or starts with it")
    return [{"params": params, "lr": lr * scale} for scale, params in sorted(groups.items())]


def configure(module, opt_cfg, params=None):
    """What ``LightningModule.configure_optimizers`` returns for ``opt_cfg`` (an ``optim:`` section)."""
    if opt_cfg.get("lr_scale"):
        if params is not None:
            raise ConfigError("optim.lr_scale needs the module's named parameters, not an explicit parameter list")
        params = param_groups(module, opt_cfg.lr, opt_cfg.lr_scale)
    else:
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
