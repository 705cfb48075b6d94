"""The learning-rate schedules come from transformers' schedule functions; they must follow the documented
formulas (zoo/optim.py) step by step, and a bad name is one ConfigError."""

from __future__ import annotations

import math

import pytest
import torch

from zoo.errors import ConfigError
from zoo.optim import build_optimizer, build_scheduler

WARMUP, TOTAL = 10, 50


def expected(kind: str, step: int) -> float:
    if kind == "none":
        return 1.0
    if step < WARMUP:
        return step / WARMUP
    if kind == "inverse_sqrt":
        return math.sqrt(WARMUP / step)
    progress = (step - WARMUP) / (TOTAL - WARMUP)
    return 0.5 * (1 + math.cos(math.pi * progress)) if kind == "cosine" else max(0.0, 1 - progress)


@pytest.mark.parametrize("kind", ["none", "inverse_sqrt", "cosine", "linear"])
def test_schedules_follow_their_formulas(kind):
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = build_optimizer([param], "adamw", lr=0.5)
    scheduler = build_scheduler(optimizer, kind, WARMUP, TOTAL)
    for step in range(TOTAL):
        lr = optimizer.param_groups[0]["lr"]
        assert lr == pytest.approx(0.5 * expected(kind, step), abs=1e-12), (kind, step)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()


def test_optimizers_and_bad_names():
    param = torch.nn.Parameter(torch.zeros(1))
    for name, cls in (("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW), ("adagrad", torch.optim.Adagrad)):
        assert isinstance(build_optimizer([param], name, lr=0.1), cls)
    with pytest.raises(ConfigError, match="unknown optimizer 'lion'"):
        build_optimizer([param], "lion", lr=0.1)
    with pytest.raises(ConfigError, match="unknown optim.scheduler 'step'"):
        build_scheduler(build_optimizer([param], "sgd", lr=0.1), "step", 0, 10)


def test_lr_scale_puts_parameters_in_groups_by_their_longest_prefix():
    from omegaconf import OmegaConf

    from zoo.optim import configure

    module = torch.nn.ModuleDict(
        {"a": torch.nn.Linear(2, 2), "b": torch.nn.ModuleDict({"c": torch.nn.Linear(2, 2), "d": torch.nn.Linear(2, 2)})}
    )
    module.b.d.bias.requires_grad_(False)
    module._trainer = None
    cfg = OmegaConf.create(
        {"name": "adam", "lr": 0.01, "weight_decay": 0.0, "scheduler": "none", "lr_scale": {"b": 10, "b.c": 0.5}}
    )
    groups = {round(g["lr"], 6): {id(p) for p in g["params"]} for g in configure(module, cfg).param_groups}
    assert groups == {
        0.01: {id(module.a.weight), id(module.a.bias)},
        0.005: {id(module.b.c.weight), id(module.b.c.bias)},
        0.1: {id(module.b.d.weight)},  # the frozen bias is left out
    }
    for bad, why in (({"bx": 2}, "no trainable parameter"), ({"a": 0}, "> 0")):
        cfg.lr_scale = bad
        with pytest.raises(ConfigError, match=why):
            configure(module, cfg)
