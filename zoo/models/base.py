"""The one base LightningModule every method subclasses.

It owns the train / validate / test loop, the optimiser, metric accumulation and logging. A method declares its
task family (``task``: "sequential", "generative" or "ctr"; ``zoo.tasks``) and supplies:

* ``compute_loss(batch)`` using ``self.loss`` (built from ``loss:`` in the config; never chosen by ``if``),
* ``sequential``: ``user_state(batch)`` + ``score_state(state, start, end)``, the scores of items
  ``start..end-1`` (the evaluator scores in item chunks when ``eval.item_chunk_size`` is set);
* ``generative``: ``rank(batch, k, candidates=None)``, ranked item ids [B, k], restricted to each row's
  ``candidates`` when given (or ``supports_candidates = False``: the builder refuses candidate protocols);
  optionally ``rank_scored(batch, k, candidates=None)``, the same lists with their scores (``zoo.load``'s
  ``recommend`` reports them; without it, a rank-derived score);
* ``ctr``: ``predict(batch)``, the click logit of each (user, item) pair [B].

Evaluation follows one :class:`zoo.evaluation.Protocol` (full, sampled, retriever candidates, mask-seen) applied
by the family's evaluator. What a model reads from the data is the DataModule's small interface: ``num_items``,
``num_users``, ``corpus`` (item text, user features), ``train_item_counts(split)`` and, for CTR models,
``features``. It states what it needs back with ``data_spec()`` and finishes its set-up in ``prepare(datamodule)``
(both called by ``zoo.build``). Upstream artifacts (Semantic IDs, a retriever's candidates, ...) come from
``zoo.stages``, named by the class attribute ``stages`` and handed over in ``self.artifacts``.

Class attributes: ``Config`` (the dataclass that validates ``model:``), ``task``, ``loss_kind`` (the loss family
it feeds: "item", "token", "ctr" or "none"), ``trainable`` (False: nothing to fit, e.g. ``pop``),
``test_overrides`` (dotted overrides that shrink the method for the registry-driven tests).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from zoo.data.datamodule import DataSpec
from zoo.errors import ConfigError
from zoo.losses import build_loss
from zoo.optim import configure

FROZEN_KEY = "zoo_frozen_weights_left_out"


def _fingerprint(state: dict, names: list[str]) -> list[float]:
    """A cheap identity check of frozen weights: the float64 sum of |w| of up to 4 of them (first, last, two
    between)."""
    if not names:
        return []
    picks = sorted({0, len(names) // 3, 2 * len(names) // 3, len(names) - 1})
    return [float(state[names[i]].detach().double().abs().sum()) for i in picks]


@dataclass
class ModelConfig:
    name: str = ""


class RecModel(L.LightningModule):
    Config = ModelConfig
    task = "sequential"
    loss_kind = "item"
    trainable = True
    supports_candidates = True  # generative: rank() restricts its lists to given candidates
    stages: tuple[str, ...] = ()  # upstream stage artifacts this method needs (zoo.stages), in self.artifacts
    test_overrides: tuple[str, ...] = ()
    prior_offsets = False  # its item prior is per-label log-odds that ``eval.prior_offset`` may shift

    def __init__(self, cfg: DictConfig, datamodule, artifacts: dict | None = None) -> None:
        from zoo.tasks import task_of

        super().__init__()
        self.cfg = cfg
        self.num_items = datamodule.num_items
        self.num_users = datamodule.num_users
        self.artifacts = dict(artifacts or {})
        self.ks = tuple(cfg.eval.ks)
        self.loss = build_loss(cfg.loss) if self.loss_kind != "none" else None
        family = task_of(type(self))
        self.val_metrics = family.evaluator(self, self.ks)
        self.test_metrics = family.evaluator(self, self.ks)
        self.test_results: dict[str, float] = {}
        self.save_hyperparameters({"config": OmegaConf.to_container(cfg, resolve=True)})

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, map_location=None, hparams_file=None, strict=None, **kwargs):
        """Lightning's classmethod, made to work: the constructor takes a DataModule, which a checkpoint does not
        hold, so the model is rebuilt through ``zoo.load`` from the config in the checkpoint's hyper-parameters
        (``{"config": ...}``) and the inference files of its run directory (``zoo.inference``), in eval mode."""
        from zoo.inference import load

        device = str(map_location) if isinstance(map_location, (str, torch.device)) else None
        model = load(checkpoint_path, device=device).model
        if not isinstance(model, cls):
            raise ConfigError(f"{checkpoint_path} holds a {type(model).__name__}, not a {cls.__name__}")
        return model

    # -- what a method supplies ---------------------------------------------------------------------------
    @classmethod
    def stages_for(cls, cfg: DictConfig) -> tuple[str, ...]:
        """The upstream stages (``zoo.stages``) this method needs under ``cfg``; default: ``cls.stages``."""
        return tuple(cls.stages)

    @classmethod
    def check_config(cls, cfg: DictConfig) -> None:
        """This method's checks of its settings that need no data: a ``ConfigError`` (one line) for an impossible
        one. Run when the config is composed and again by ``zoo.build.build`` before any data is loaded or stage
        built, so a typo fails at once rather than after a retriever or an LLM stage has run. Checks that need the
        data (the catalogue size, titles) stay in ``__init__``. Default: none."""

    @classmethod
    def has_item_prior(cls, cfg: DictConfig) -> bool:
        """Whether this method, under ``cfg``, has an item scorer of its own that generative decoding may add to
        its beam scores (``eval.prior_weight``; the model then puts ``item_prior`` in its decoding inputs).
        Default: no."""
        return False

    @classmethod
    def protocol_for(cls, cfg: DictConfig, protocol, artifacts: dict):
        """The evaluation protocol this method runs under, given the configured one and its stage artifacts
        (a re-ranker ranks its retriever's lists); default: the configured protocol."""
        return protocol

    def data_spec(self) -> DataSpec:
        """What this method needs from the DataModule: the training mode and the batch transform (the history
        length is ``data.max_len``)."""
        return DataSpec()

    def prepare(self, datamodule) -> None:
        """Called once the DataModule is connected, before training (count items, build Semantic IDs, ...)."""

    def compute_loss(self, batch: dict) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement compute_loss")

    def user_state(self, batch: dict) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement user_state (or be generative)")

    def score_state(self, state: Any, start: int, end: int) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement score_state (or be generative)")

    def rank(self, batch: dict, k: int, candidates: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement rank")

    def predict(self, batch: dict) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement predict (CTR models)")

    def reloadable_frozen_names(self) -> list[str]:
        """State-dict names of frozen weights that building this module again reproduces exactly (a pretrained
        backbone under LoRA): checkpoints leave them out and loading fills them from the freshly built module.
        Default: none, every weight is saved."""
        return []

    # -- checkpoints without the frozen pretrained weights --------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        names = self.reloadable_frozen_names()
        if not names:
            return
        state = checkpoint["state_dict"]
        kept = [n for n in names if n in state]
        checkpoint[FROZEN_KEY] = {"names": kept, "fingerprint": _fingerprint(state, kept)}
        for name in kept:
            del state[name]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        left_out = checkpoint.get(FROZEN_KEY)
        if not left_out:
            return
        own = self.state_dict()
        missing = [n for n in left_out["names"] if n not in own]
        if missing:
            raise ConfigError(f"checkpoint expects frozen weights this model does not have (e.g. {missing[0]})")
        mine, theirs = _fingerprint(own, left_out["names"]), left_out["fingerprint"]
        if len(mine) != len(theirs) or not all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(mine, theirs)):
            raise ConfigError(
                "the checkpoint was trained on other frozen backbone weights than this model loaded: "
                "load it with the model.backbone it was trained with"
            )
        checkpoint["state_dict"].update({n: own[n] for n in left_out["names"]})

    # -- shared loop --------------------------------------------------------------------------------------
    def score(self, batch: dict) -> torch.Tensor:
        """Scores of every item ([B, N+1], column 0 = padding)."""
        return self.score_state(self.user_state(batch), 0, self.num_items + 1)

    def eval_ranks(self, batch: dict) -> torch.Tensor:
        """Target ranks of an evaluation batch under the protocol (sequential and generative methods)."""
        return self.test_metrics.ranks(self, batch)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.compute_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["user"]))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.val_metrics.update(self, batch)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.test_metrics.update(self, batch)

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def on_test_epoch_start(self) -> None:
        if self.cfg.eval.get("save_ranks") and hasattr(self.test_metrics, "keep_ranks"):
            self.test_metrics.keep_ranks()

    def on_test_epoch_end(self) -> None:
        kept = getattr(self.test_metrics, "kept", None)
        if kept is not None and self.trainer.is_global_zero:
            import numpy as np

            from zoo.io import atomic_path

            rows = torch.cat(kept).numpy() if kept else np.zeros((0, 3), dtype=np.int64)
            with atomic_path(Path(self.trainer.default_root_dir) / "test_ranks.npz") as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, user=rows[:, 0], target=rows[:, 1], rank=rows[:, 2])
        self.test_results = self._log_metrics("test")

    def _log_metrics(self, prefix: str) -> dict[str, float]:
        evaluator = getattr(self, f"{prefix}_metrics")
        values = {f"{prefix}/{k}": v.float() for k, v in evaluator.compute().items()}
        evaluator.reset()
        self.log_dict(values, prog_bar=False, sync_dist=False)
        return {k: float(v) for k, v in values.items()}

    def configure_optimizers(self):
        return configure(self, self.cfg.optim)
