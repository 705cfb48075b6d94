"""Residual-quantised variational auto-encoder (RQ-VAE) for Semantic IDs (TIGER, Rajput et al. 2023).

An MLP encoder maps an item's text embedding to a latent vector; ``num_levels`` codebooks quantise it residually
(level l quantises what the levels before it left over); a mirrored MLP decoder reconstructs the embedding from
the sum of the chosen code vectors. The codes (one per level) are the item's Semantic ID.

Loss = reconstruction MSE + sum over levels of ||sg[r_l] - e_l||^2 + beta * ||r_l - sg[e_l]||^2, with
straight-through gradients from the decoder to the encoder.

Codebook collapse (a few codes take every item) is the common failure, so each codebook is initialised by k-means
on the first training batch, and codes that no item chose during the last ``restart_every`` steps are restarted
on random residuals of the current batch (``ResidualQuantizer.restart_dead_codes``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


def kmeans(points: torch.Tensor, k: int, iters: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Lloyd's k-means with k-means++ seeding; returns ``k`` centroids [k, d].

    With fewer distinct points than ``k`` the surplus centroids are copies of points plus a small jitter, so
    every code starts somewhere the data is (the dead-code restart spreads them later).
    """
    points = points.detach().float()
    n = len(points)
    centroids = torch.empty(k, points.shape[1], dtype=points.dtype, device=points.device)
    first = torch.randint(n, (1,), generator=generator, device="cpu").item()
    centroids[0] = points[first]
    nearest = ((points - centroids[0]) ** 2).sum(-1)
    for c in range(1, k):
        total = nearest.sum()
        if total <= 0:  # every point is already a centroid: jittered copies
            pick = torch.randint(n, (1,), generator=generator, device="cpu").item()
            noise = torch.randn(points.shape[1], generator=generator, device="cpu").to(points)
            centroids[c] = points[pick] + 1e-3 * points.std().clamp(min=1e-6) * noise
        else:
            pick = torch.multinomial((nearest / total).cpu(), 1, generator=generator).item()
            centroids[c] = points[pick]
        nearest = torch.minimum(nearest, ((points - centroids[c]) ** 2).sum(-1))
    for _ in range(iters):
        assign = torch.cdist(points, centroids).argmin(-1)
        sums = torch.zeros_like(centroids).index_add_(0, assign, points)
        counts = torch.bincount(assign, minlength=k).to(points.dtype)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled, None]
    return centroids


class ResidualQuantizer(nn.Module):
    """``num_levels`` codebooks of ``codebook_size`` vectors applied to successive residuals."""

    def __init__(self, num_levels: int, codebook_size: int, dim: int, beta: float = 0.25, kmeans_iters: int = 20):
        super().__init__()
        self.num_levels, self.codebook_size, self.dim = num_levels, codebook_size, dim
        self.beta, self.kmeans_iters = beta, kmeans_iters
        self.codebooks = nn.Parameter(torch.randn(num_levels, codebook_size, dim) * 0.01)
        self.register_buffer("initialized", torch.tensor(False))
        self.register_buffer("usage", torch.zeros(num_levels, codebook_size))  # picks since the last restart

    def nearest_codes(self, residual: torch.Tensor, level: int) -> torch.Tensor:
        """Index of the closest code of ``level`` to each residual ([B, d] -> [B])."""
        book = self.codebooks[level]
        dist = (residual**2).sum(-1, keepdim=True) - 2 * residual @ book.T + (book**2).sum(-1)[None, :]
        return dist.argmin(-1)

    @torch.no_grad()
    def init_from_batch(self, latent: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """k-means each level's codebook on the residuals of ``latent`` left by the levels before it."""
        residual = latent.detach().float()
        for level in range(self.num_levels):
            self.codebooks.data[level] = kmeans(residual, self.codebook_size, self.kmeans_iters, generator)
            residual = residual - self.codebooks[level][self.nearest_codes(residual, level)]
        self.initialized.fill_(True)

    def forward(self, latent: torch.Tensor) -> QuantizerOutput:
        if self.training and not bool(self.initialized):
            self.init_from_batch(latent)
        residual = latent
        quantized = torch.zeros_like(latent)
        codes, residuals = [], []
        codebook_loss = latent.new_zeros(())
        commitment_loss = latent.new_zeros(())
        for level in range(self.num_levels):
            code = self.nearest_codes(residual.detach(), level)
            vector = self.codebooks[level][code]
            codebook_loss = codebook_loss + ((residual.detach() - vector) ** 2).sum(-1).mean()
            commitment_loss = commitment_loss + ((residual - vector.detach()) ** 2).sum(-1).mean()
            residuals.append(residual.detach())
            codes.append(code)
            quantized = quantized + vector.detach()
            residual = residual - vector.detach()
        codes_t = torch.stack(codes, dim=1)
        if self.training:
            self.usage += torch.stack(
                [torch.bincount(codes_t[:, lvl], minlength=self.codebook_size) for lvl in range(self.num_levels)]
            ).to(self.usage)
        return QuantizerOutput(
            quantized=latent + (quantized - latent).detach(),  # straight-through
            codes=codes_t,
            loss=codebook_loss + self.beta * commitment_loss,
            residuals=torch.stack(residuals),
        )

    @torch.no_grad()
    def restart_dead_codes(self, residuals: torch.Tensor, generator: torch.Generator | None = None) -> int:
        """Move every code no item picked since the last call onto a random residual of its level (from
        ``residuals`` [num_levels, B, d] of the current batch); returns how many codes were restarted."""
        restarted = 0
        for level in range(self.num_levels):
            dead = torch.nonzero(self.usage[level] == 0).flatten()
            if len(dead):
                pool = residuals[level]
                pick = torch.randint(len(pool), (len(dead),), generator=generator, device="cpu").to(pool.device)
                self.codebooks.data[level, dead] = pool[pick].to(self.codebooks.dtype)
                restarted += len(dead)
        self.usage.zero_()
        return restarted


@dataclass
class QuantizerOutput:
    quantized: torch.Tensor  # [B, d] sum of the chosen code vectors, straight-through to the latent
    codes: torch.Tensor  # [B, num_levels]
    loss: torch.Tensor  # codebook + beta * commitment, summed over levels
    residuals: torch.Tensor  # [num_levels, B, d] (detached) what each level quantised


def mlp(dims: Sequence[int]) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(d_in, d_out))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


@dataclass
class RQVAEOutput:
    reconstruction: torch.Tensor
    codes: torch.Tensor
    recon_loss: torch.Tensor  # squared error summed over features, mean over the batch
    quant_loss: torch.Tensor
    residuals: torch.Tensor

    @property
    def loss(self) -> torch.Tensor:
        return self.recon_loss + self.quant_loss


class RQVAE(nn.Module):
    """Encoder MLP -> residual quantiser -> mirrored decoder MLP."""

    def __init__(
        self,
        input_dim: int,
        hidden_dims: Sequence[int] = (512, 256, 128),
        latent_dim: int = 32,
        num_levels: int = 3,
        codebook_size: int = 256,
        beta: float = 0.25,
        kmeans_iters: int = 20,
    ) -> None:
        super().__init__()
        dims = [input_dim, *hidden_dims, latent_dim]
        self.encoder = mlp(dims)
        self.decoder = mlp(dims[::-1])
        self.quantizer = ResidualQuantizer(num_levels, codebook_size, latent_dim, beta, kmeans_iters)

    def forward(self, x: torch.Tensor) -> RQVAEOutput:
        quant = self.quantizer(self.encoder(x))
        reconstruction = self.decoder(quant.quantized)
        return RQVAEOutput(
            reconstruction=reconstruction,
            codes=quant.codes,
            recon_loss=((reconstruction - x) ** 2).sum(-1).mean(),
            quant_loss=quant.loss,
            residuals=quant.residuals,
        )

    @torch.no_grad()
    def encode_codes(self, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
        """Codes of every row of ``x`` ([N, num_levels]), in eval mode, batch by batch."""
        was_training = self.training
        self.eval()
        try:
            return torch.cat([self(x[i : i + batch_size]).codes for i in range(0, len(x), batch_size)])
        finally:
            self.train(was_training)


def collision_rate(codes: np.ndarray) -> float:
    """Share of items whose codes are not unique: 1 - #distinct code tuples / #items."""
    if len(codes) == 0:
        return 0.0
    return 1.0 - len(np.unique(codes, axis=0)) / len(codes)


def codebook_stats(codes: np.ndarray, codebook_size: int) -> dict[str, float]:
    """Per level: share of codes used by at least one item (``usage_l<i>``) and the perplexity of the code
    distribution (``perplexity_l<i>``; equals codebook_size when items spread evenly, 1 when they collapse)."""
    stats: dict[str, float] = {}
    for level in range(codes.shape[1]):
        counts = np.bincount(codes[:, level], minlength=codebook_size).astype(np.float64)
        probs = counts[counts > 0] / counts.sum()
        stats[f"usage_l{level}"] = float((counts > 0).mean())
        stats[f"perplexity_l{level}"] = float(np.exp(-(probs * np.log(probs)).sum()))
    return stats


def add_collision_codes(codes: np.ndarray) -> np.ndarray:
    """Append one column so every row is unique: items sharing the same codes get 0, 1, 2, ... in row order
    (deterministic: the first item of each group keeps 0)."""
    codes = np.asarray(codes, dtype=np.int64)
    if len(codes) == 0:
        return np.zeros((0, codes.shape[1] + 1), dtype=np.int64)
    _, group = np.unique(codes, axis=0, return_inverse=True)
    group = group.reshape(-1)
    order = np.argsort(group, kind="stable")
    sorted_group = group[order]
    group_start = np.r_[0, np.flatnonzero(np.diff(sorted_group)) + 1]
    sizes = np.diff(np.r_[group_start, len(sorted_group)])
    within = np.arange(len(sorted_group)) - np.repeat(group_start, sizes)
    extra = np.empty(len(codes), dtype=np.int64)
    extra[order] = within
    return np.concatenate([codes, extra[:, None]], axis=1)
