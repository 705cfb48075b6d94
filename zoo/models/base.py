"""The one base LightningModule every method subclasses (design contract 5).

It owns the train / validate / test loop, the optimiser, metric accumulation and logging. A method supplies:

* ``compute_loss(batch)`` using ``self.loss`` (built from ``loss:`` in the config; never chosen by ``if``),
* and either **scores** -- ``user_state(batch)`` + ``score_state(state, start, end)`` giving scores of items
  ``start..end-1`` (the base evaluates in item chunks when ``eval.item_chunk_size`` is set) --
  or, for generative methods (``generative = True``), ``rank(batch, k)`` returning ranked item ids [B, k].

Class attributes: ``Config`` (the dataclass that validates ``model:``), ``loss_kind`` (the loss family it feeds:
"item", "token" or "none"), ``trainable`` (False: nothing to fit, e.g. ``pop``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from zoo.data.datamodule import DataSpec, SequentialDataModule
from zoo.errors import ConfigError
from zoo.losses import build_loss
from zoo.metrics import MISS, RankingMetrics, ranks_from_lists, sampled_ranks, target_ranks
from zoo.metrics.chunked import chunked_target_ranks
from zoo.metrics.generation import GenerationMetrics

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
    loss_kind = "item"
    generative = False
    trainable = True

    def __init__(self, cfg: DictConfig, datamodule: SequentialDataModule) -> None:
        super().__init__()
        self.cfg = cfg
        self.hparams_cfg = cfg.model
        self.num_items = datamodule.num_items
        self.num_users = datamodule.num_users
        self.ks = tuple(cfg.eval.ks)
        self.loss = build_loss(cfg.loss) if self.loss_kind != "none" else None
        self.val_metrics = RankingMetrics(self.ks)
        self.test_metrics = RankingMetrics(self.ks)
        if self.generative:  # how often the ranked lists hold invalid ids or repeat an item
            self.val_generation = GenerationMetrics(self.num_items)
            self.test_generation = GenerationMetrics(self.num_items)
        self.test_results: dict[str, float] = {}
        self.save_hyperparameters({"config": OmegaConf.to_container(cfg, resolve=True)})

    # -- what a method supplies ---------------------------------------------------------------------------
    def data_spec(self) -> DataSpec:
        """What this method needs from the DataModule (training mode, history length, batch transform)."""
        return DataSpec()

    def prepare(self, datamodule: SequentialDataModule) -> None:
        """Called once the DataModule is connected, before training (count items, build Semantic IDs, ...)."""

    def compute_loss(self, batch: dict) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement compute_loss")

    def user_state(self, batch: dict) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement user_state (or be generative)")

    def score_state(self, state: Any, start: int, end: int) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement score_state (or be generative)")

    def rank(self, batch: dict, k: int) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement rank")

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
        targets = batch["target"]
        if self.generative:
            ranked = self.rank(batch, max(max(self.ks), self.cfg.eval.num_beams))
            stage = "test" if self.trainer is not None and self.trainer.testing else "val"
            getattr(self, f"{stage}_generation").update(ranked)
            return ranks_from_lists(ranked, targets)
        if "candidates" in batch:
            return self.candidate_ranks(batch)
        seen = batch["history"] if self.cfg.eval.mask_seen else None
        chunk = self.cfg.eval.item_chunk_size
        if chunk and chunk < self.num_items:
            state = self.user_state(batch)
            return chunked_target_ranks(
                lambda s, e: self.score_state(state, s, e), targets, self.num_items, chunk, max(self.ks), seen
            )
        return target_ranks(self.score(batch), targets, seen)

    def candidate_ranks(self, batch: dict) -> torch.Tensor:
        """Rank of the target among the batch's candidate list (sampled 1+n, or a retriever's top-K): the same
        pessimistic rule as full ranking; a target that is not in the list is a miss."""
        targets, candidates = batch["target"], batch["candidates"]
        with_target = torch.cat([targets.view(-1, 1), candidates], dim=1)
        ranks = sampled_ranks(self.score(batch).gather(1, with_target), with_target)
        present = (candidates == targets.view(-1, 1)).any(dim=1)
        return torch.where(present, ranks, torch.full_like(ranks, MISS))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.compute_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["history"]))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.val_metrics.update(self.eval_ranks(batch))

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.test_metrics.update(self.eval_ranks(batch))

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def on_test_epoch_end(self) -> None:
        self.test_results = self._log_metrics("test")

    def _log_metrics(self, prefix: str) -> dict[str, float]:
        metrics = [getattr(self, f"{prefix}_metrics")]
        if self.generative:
            metrics.append(getattr(self, f"{prefix}_generation"))
        values = {}
        for metric in metrics:
            values.update({f"{prefix}/{k}": v.float() for k, v in metric.compute().items()})
            metric.reset()
        self.log_dict(values, prog_bar=False, sync_dist=False)
        return {k: float(v) for k, v in values.items()}

    def configure_optimizers(self):
        opt_cfg = self.cfg.optim
        params = [p for p in self.parameters() if p.requires_grad]
        name = opt_cfg.name.lower()
        if name in ("adam", "adamw"):
            cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
            optimizer = cls(params, lr=opt_cfg.lr, weight_decay=opt_cfg.weight_decay, betas=tuple(opt_cfg.betas))
        elif name == "adagrad":
            optimizer = torch.optim.Adagrad(params, lr=opt_cfg.lr, weight_decay=opt_cfg.weight_decay)
        elif name == "sgd":
            optimizer = torch.optim.SGD(params, lr=opt_cfg.lr, weight_decay=opt_cfg.weight_decay, momentum=0.9)
        else:
            raise ConfigError(f"unknown optim.name '{opt_cfg.name}' (adam | adamw | adagrad | sgd)")
        schedule = _lr_lambda(opt_cfg.scheduler, opt_cfg.warmup_steps, self.trainer)
        if schedule is None:
            return optimizer
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _lr_lambda(kind: str, warmup: int, trainer):
    warmup = max(int(warmup), 0)
    if kind == "none":
        return None
    if kind == "inverse_sqrt":
        w = max(warmup, 1)
        return lambda step: min((step + 1) / w, math.sqrt(w / (step + 1)))
    total = max(int(trainer.estimated_stepping_batches), 1) if trainer is not None else 1

    def ramp(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        return 0.5 * (1 + math.cos(math.pi * progress)) if kind == "cosine" else 1.0 - progress

    if kind in ("cosine", "linear"):
        return ramp
    raise ConfigError(f"unknown optim.scheduler '{kind}' (none | inverse_sqrt | cosine | linear)")
