"""zoo: LLM-based and generative recommendation on PyTorch Lightning.

``zoo.load(path)`` gives a ready model of a run directory, a checkpoint or an exported folder
(``zoo.inference``), ``zoo.export(run_dir, out_dir)`` writes a Hugging Face-style folder (``zoo.export``) and
``zoo.build(cfg)`` builds (model, datamodule) from a composed config (``zoo.build``). They are imported on first
use, so ``import zoo`` stays cheap (no torch).

``zoo.build`` and ``zoo.export`` are also the names of submodules: importing one (``from zoo.build import
build``) sets the package attribute to the module, so those two modules are callable and ``zoo.build(cfg)`` works
either way."""

from __future__ import annotations

import importlib

__all__ = ["build", "export", "load"]


def __getattr__(name: str):
    if name == "load":
        from zoo.inference import load

        return load
    if name in ("build", "export"):
        return importlib.import_module(f"zoo.{name}")
    raise AttributeError(f"module 'zoo' has no attribute '{name}'")
