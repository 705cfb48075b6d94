"""The RQ-VAE of Semantic IDs: item text -> embeddings -> RQ-VAE -> unique Semantic IDs.

The ``item_embeddings`` and ``semantic_ids`` stages of ``zoo.stages`` produce and cache them (keyed by the corpus,
encoder, fields, RQ-VAE settings and seed); a Semantic-ID method names the ``semantic_ids`` stage. The ``rqvae``
model runs the stage alone (``python -m zoo.run recipe=rqvae_beauty``), rebuilding its cache entry, and reports
reconstruction, codebook usage and collisions.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset

from zoo.data.datamodule import BatchIndexSampler
from zoo.models.base import ModelConfig
from zoo.modules.rqvae import RQVAE, codebook_stats, collision_rate
from zoo.modules.text_encoder import DEFAULT_ENCODER
from zoo.optim import build_optimizer
from zoo.registry import MODELS

log = logging.getLogger(__name__)

MONITOR = "rqvae/loss"  # the full-catalogue RQ-VAE loss (reconstruction + quantisation); the stage minimises it


@dataclass
class RQVAEConfig:
    hidden_dims: list[int] = field(default_factory=lambda: [512, 256, 128])
    latent_dim: int = 32
    num_levels: int = 3
    codebook_size: int = 256
    beta: float = 0.25
    kmeans_iters: int = 20  # k-means on the first batch initialises every codebook
    restart_every: int = 100  # steps; codes unused for that long restart on random residuals (0 = never)
    epochs: int = 3000  # passes over the items (public runs: ~20k)
    batch_size: int = 1024
    optimizer: str = "adam"  # adagrad | adam | adamw (public runs: adagrad lr 0.4, which diverges on this loss scale)
    lr: float = 0.001
    weight_decay: float = 0.0
    eval_every: int = 100  # epochs between full-catalogue metrics (usage, perplexity, collisions)


@dataclass
class SemanticIdConfig(ModelConfig):
    """What every Semantic-ID method shares: the text encoder, the item fields it reads, and the RQ-VAE."""

    text_encoder: str = DEFAULT_ENCODER  # a sentence-transformers name or path (paper: sentence-t5-xxl)
    text_fields: list[str] = field(default_factory=lambda: ["title", "price", "brand", "categories", "genres"])
    encode_batch_size: int = 256
    rqvae: RQVAEConfig = field(default_factory=RQVAEConfig)


@dataclass
class RQVAEStageConfig(SemanticIdConfig):
    name: str = "rqvae"


class _ItemBatches(Dataset):
    def __init__(self, embeddings: torch.Tensor) -> None:
        self.embeddings = embeddings

    def __len__(self) -> int:
        return len(self.embeddings)

    def __getitem__(self, index: list[int]) -> torch.Tensor:
        return self.embeddings[index]


@MODELS.register("rqvae")
class RQVAEModule(L.LightningModule):
    """Trains an :class:`RQVAE` on item embeddings. Registered as the standalone model ``rqvae``."""

    Config = RQVAEStageConfig
    standalone = True
    test_overrides = ("model.text_fields=[title]", "model.rqvae.epochs=3", "model.rqvae.eval_every=3")  # test_methods

    def __init__(self, rq_cfg, embeddings: np.ndarray | torch.Tensor, seed: int = 42) -> None:
        super().__init__()
        self.rq_cfg = rq_cfg
        self.seed = seed
        self.embeddings = torch.as_tensor(np.asarray(embeddings), dtype=torch.float32)
        self.model = RQVAE(
            input_dim=self.embeddings.shape[1],
            hidden_dims=list(rq_cfg.hidden_dims),
            latent_dim=rq_cfg.latent_dim,
            num_levels=rq_cfg.num_levels,
            codebook_size=rq_cfg.codebook_size,
            beta=rq_cfg.beta,
            kmeans_iters=rq_cfg.kmeans_iters,
        )
        self._restart_rng = torch.Generator().manual_seed(seed)
        self._last_residuals: torch.Tensor | None = None

    # -- data -------------------------------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        sampler = BatchIndexSampler(len(self.embeddings), self.rq_cfg.batch_size, shuffle=True, seed=self.seed)
        return DataLoader(_ItemBatches(self.embeddings), sampler=sampler, batch_size=None)

    def val_dataloader(self) -> DataLoader:
        sampler = BatchIndexSampler(len(self.embeddings), 4096, shuffle=False, seed=self.seed)
        return DataLoader(_ItemBatches(self.embeddings), sampler=sampler, batch_size=None)

    # -- training ---------------------------------------------------------------------------------------------
    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        out = self.model(batch)
        self._last_residuals = out.residuals
        n = len(batch)
        self.log("rqvae/train_loss", out.loss, prog_bar=True, batch_size=n)
        self.log("rqvae/train_recon", out.recon_loss, batch_size=n)
        return out.loss

    def on_train_start(self) -> None:
        from zoo.progress import Progress

        # a log line (never a second bar beside Lightning's) every ~10 s: epochs done, rate, ETA, latest loss
        self._progress = Progress(self.trainer.max_epochs, "RQ-VAE", "epoch", log, tty=False)
        self._progress.done = self.current_epoch  # a resumed fit counts from its epoch

    def on_train_epoch_end(self) -> None:
        loss = self.trainer.callback_metrics.get("rqvae/train_loss")
        self._progress.update(1, **({"loss": round(float(loss), 5)} if loss is not None else {}))

    def on_train_end(self) -> None:
        self._progress.close()

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        every = self.rq_cfg.restart_every
        if every and self.global_step % every == 0 and self._last_residuals is not None:
            restarted = self.model.quantizer.restart_dead_codes(self._last_residuals, self._restart_rng)
            self.log("rqvae/restarted_codes", float(restarted), batch_size=1)

    def on_validation_epoch_start(self) -> None:
        self._val_codes: list[torch.Tensor] = []
        self._val_sums = torch.zeros(3, dtype=torch.float64)

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        out = self.model(batch)
        self._val_codes.append(out.codes.cpu())
        n = len(batch)
        self._val_sums += torch.tensor([out.recon_loss.item() * n, out.quant_loss.item() * n, n], dtype=torch.float64)

    def on_validation_epoch_end(self) -> None:
        recon, quant, n = self._val_sums.tolist()
        codes = torch.cat(self._val_codes).numpy()
        metrics = self._summary(codes, recon / n, quant / n)
        self.log_dict({k: float(v) for k, v in metrics.items()}, batch_size=int(n))

    def _summary(self, codes: np.ndarray, recon_sum: float, quant: float) -> dict[str, float]:
        metrics = {
            "rqvae/recon_mse": recon_sum / self.embeddings.shape[1],  # mean over features, as MSE
            "rqvae/quant_loss": quant,
            "rqvae/collision_rate": collision_rate(codes),
            MONITOR: recon_sum + quant,
        }
        metrics.update({f"rqvae/{k}": v for k, v in codebook_stats(codes, self.rq_cfg.codebook_size).items()})
        return metrics

    @torch.no_grad()
    def catalogue_metrics(self) -> tuple[np.ndarray, dict[str, float]]:
        """Codes of every item (eval mode) and the rqvae/* metrics over the whole catalogue."""
        self.model.eval()
        x = self.embeddings.to(self.device)
        recon, quant, codes = 0.0, 0.0, []
        for i in range(0, len(x), 4096):
            out = self.model(x[i : i + 4096])
            recon += out.recon_loss.item() * len(out.codes)
            quant += out.quant_loss.item() * len(out.codes)
            codes.append(out.codes.cpu())
        codes_np = torch.cat(codes).numpy()
        return codes_np, self._summary(codes_np, recon / len(x), quant / len(x))

    def configure_optimizers(self):
        return build_optimizer(self.parameters(), self.rq_cfg.optimizer, self.rq_cfg.lr, self.rq_cfg.weight_decay)

    # -- the standalone stage ---------------------------------------------------------------------------------
    @classmethod
    def run_standalone(cls, cfg: DictConfig, run_dir: Path) -> tuple[dict[str, float], bool]:
        """``python -m zoo.run recipe=rqvae_<dataset>``: (re)train the RQ-VAE, refresh the Semantic-ID stage."""
        from zoo.data.loading import load_corpus
        from zoo.stages import load_codes, resolve

        corpus = load_corpus(cfg.data)
        artifact = resolve("semantic_ids", cfg, corpus, rebuild=True)
        codes = load_codes(artifact)
        metrics = dict(artifact.metrics)
        metrics["rqvae/num_items"] = float(len(codes))
        metrics["rqvae/max_collision_index"] = float(codes[:, -1].max()) if len(codes) else 0.0
        return metrics, True


def _stage_trainer_config(cfg: DictConfig, single_device: bool) -> DictConfig:
    """The run's config with the trainer set up for the RQ-VAE: its epochs, full-catalogue evaluation every
    ``eval_every`` epochs, fp32 (nearest-code search needs it), no early stopping; one device when nested in
    another method's ``prepare``."""
    stage = copy.deepcopy(cfg)
    rq = cfg.model.rqvae
    t = stage.trainer
    t.max_epochs, t.max_steps, t.max_time = rq.epochs, -1, None
    t.limit_train_batches = t.limit_val_batches = t.limit_test_batches = None
    t.check_val_every_n_epoch = max(1, min(rq.eval_every, rq.epochs))
    t.monitor, t.monitor_mode, t.early_stopping_patience = MONITOR, "min", 0
    t.gradient_clip_val, t.accumulate_grad_batches, t.precision = None, 1, "32-true"
    if single_device:
        t.devices, t.strategy = 1, "auto"
    return stage


def train_rqvae(
    cfg: DictConfig, embeddings: np.ndarray, run_dir: Path, single_device: bool
) -> tuple[RQVAEModule, bool]:
    """Fit the RQ-VAE of ``cfg.model.rqvae`` on ``embeddings`` with a trainer from ``build_trainer``; returns
    the module and whether this process is the global rank 0."""
    from zoo.trainer import build_trainer

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = RQVAEModule(cfg.model.rqvae, embeddings, seed=cfg.seed)
    trainer = build_trainer(_stage_trainer_config(cfg, single_device), module, run_dir)
    trainer.fit(module)
    return module, trainer.is_global_zero
