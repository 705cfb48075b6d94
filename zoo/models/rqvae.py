"""The Semantic-ID stage: item text -> embeddings -> RQ-VAE -> unique Semantic IDs, each step cached on disk.

Any Semantic-ID method calls :func:`build_semantic_ids`; the ``rqvae`` model runs this stage alone
(``python -m zoo.run recipe=rqvae_beauty``) and reports reconstruction, codebook usage and collisions.

Caches live under ``model.cache_dir`` (else ``$ZOO_CACHE_DIR``, else ``<run_root>/cache``):
``embeddings/<corpus>-<encoder>-<key>.npy`` and ``semantic_ids/<corpus>-<key>.npz`` (+ the RQ-VAE weights as
``.pt``), keyed by the exact item sentences, encoder, RQ-VAE settings and seed.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset

from zoo.data.corpus import Corpus
from zoo.data.datamodule import BatchIndexSampler
from zoo.errors import ConfigError
from zoo.io import atomic_path
from zoo.models.base import ModelConfig
from zoo.modules.rqvae import RQVAE, add_collision_codes, codebook_stats, collision_rate
from zoo.modules.text_encoder import DEFAULT_ENCODER, item_embeddings
from zoo.registry import MODELS

log = logging.getLogger(__name__)

CACHE_ENV = "ZOO_CACHE_DIR"
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
    cache_dir: str | None = None  # else $ZOO_CACHE_DIR, else <run_root>/cache
    rqvae: RQVAEConfig = field(default_factory=RQVAEConfig)


@dataclass
class RQVAEStageConfig(SemanticIdConfig):
    name: str = "rqvae"


@dataclass
class SemanticIds:
    codes: np.ndarray  # [N, num_levels + 1] codes of items 1..N; the last column separates collisions
    metrics: dict[str, float]  # rqvae/* metrics of the model that produced them
    path: Path  # the cache file
    reused: bool
    is_global_zero: bool = True  # False on the other ranks of a multi-process RQ-VAE run


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
        name, lr, wd = self.rq_cfg.optimizer.lower(), self.rq_cfg.lr, self.rq_cfg.weight_decay
        if name == "adagrad":
            return torch.optim.Adagrad(self.parameters(), lr=lr, weight_decay=wd)
        if name == "adam":
            return torch.optim.Adam(self.parameters(), lr=lr, weight_decay=wd)
        if name == "adamw":
            return torch.optim.AdamW(self.parameters(), lr=lr, weight_decay=wd)
        raise ConfigError(f"unknown model.rqvae.optimizer '{self.rq_cfg.optimizer}' (adagrad | adam | adamw)")

    # -- the standalone stage ---------------------------------------------------------------------------------
    @classmethod
    def run_standalone(cls, cfg: DictConfig, run_dir: Path) -> tuple[dict[str, float], bool]:
        """``python -m zoo.run recipe=rqvae_<dataset>``: (re)train the RQ-VAE, refresh the Semantic-ID cache."""
        from zoo.data.loading import load_corpus

        corpus = load_corpus(cfg.data)
        ids = build_semantic_ids(cfg, corpus, run_dir, reuse=False, single_device=False)
        metrics = dict(ids.metrics)
        metrics["rqvae/num_items"] = float(len(ids.codes))
        metrics["rqvae/max_collision_index"] = float(ids.codes[:, -1].max()) if len(ids.codes) else 0.0
        return metrics, ids.is_global_zero


def cache_root(cfg: DictConfig) -> Path:
    """Where stage outputs are cached: ``model.cache_dir``, else ``$ZOO_CACHE_DIR``, else ``<run_root>/cache``."""
    if cfg.model.get("cache_dir"):
        return Path(cfg.model.cache_dir)
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(cfg.run_root) / "cache"


def semantic_id_cache_key(embedding_key: str, rq_cfg, seed: int) -> str:
    settings = OmegaConf.to_container(rq_cfg, resolve=True) if isinstance(rq_cfg, DictConfig) else dict(rq_cfg)
    blob = json.dumps({"embeddings": embedding_key, "rqvae": settings, "seed": seed, "format": 1}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


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


def build_semantic_ids(
    cfg: DictConfig, corpus: Corpus, run_dir: Path, reuse: bool = True, single_device: bool = True
) -> SemanticIds:
    """Semantic IDs of every item of ``corpus``: loaded from the cache when ``reuse`` and present, else computed
    (embeddings -> RQ-VAE training -> codes + collision column) and cached atomically."""
    mcfg = cfg.model
    root = cache_root(cfg)
    started = time.time()
    embeddings, embed_key = item_embeddings(
        corpus, mcfg.text_encoder, list(mcfg.text_fields), root, mcfg.encode_batch_size, _encode_device(cfg)
    )
    embed_seconds = time.time() - started
    key = semantic_id_cache_key(embed_key, mcfg.rqvae, cfg.seed)
    path = root / "semantic_ids" / f"{corpus.name}-{key}.npz"
    if reuse and path.is_file():
        with np.load(path) as data:
            codes, metrics = data["codes"], json.loads(str(data["metrics"]))
        metrics = {k: v for k, v in metrics.items() if not k.startswith("time/")}  # timings of another run
        log.info("Semantic IDs: reusing %s", path)
        return SemanticIds(codes=codes, metrics=metrics, path=path, reused=True)
    started = time.time()
    module, is_zero = train_rqvae(cfg, embeddings, run_dir, single_device)
    raw_codes, metrics = module.catalogue_metrics()
    metrics["time/embeddings_s"] = round(embed_seconds, 3)
    metrics["time/rqvae_s"] = round(time.time() - started, 3)
    codes = add_collision_codes(raw_codes)
    with atomic_path(path.with_suffix(".pt")) as tmp:
        torch.save(module.model.state_dict(), tmp)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, codes=codes, metrics=json.dumps(metrics))
    log.info("Semantic IDs: wrote %s (collision rate %.4f)", path, metrics["rqvae/collision_rate"])
    return SemanticIds(codes=codes, metrics=metrics, path=path, reused=False, is_global_zero=is_zero)


def _encode_device(cfg: DictConfig) -> str:
    accelerator = cfg.trainer.accelerator or ("cpu" if cfg.trainer.preset in ("cpu", "ddp_cpu") else "gpu")
    return "cuda" if accelerator in ("gpu", "cuda") and torch.cuda.is_available() else "cpu"
