"""The user embedding module of UEM (Doddapaneni et al., 2024): a user's history of cached item-text vectors ->
soft prompts in the LM's embedding space.

Each history item is one vector of a frozen sentence encoder (the ``item_embeddings`` stage: computed once per
corpus, never inside a training step), optionally plus a learned embedding of the user's rating of it and of its
recency. The module is

1. ``Linear(d_enc -> d)`` per item, + recency position (0 = most recent) + rating level (when the corpus has them);
2. a small Transformer encoder over the history (padding masked);
3. ``tokens="per_item"``: one soft token per history item; ``tokens="queries"``: K learned query tokens that
   resample the history, Perceiver-resampler style (each layer: the queries cross-attend to the encoded history
   and to themselves, then an MLP), so the LM sees K tokens whatever the history length;
4. ``LayerNorm + Linear(d -> d_LM)``: the soft prompts, which the LM receives through the shared injection path
   (``zoo.modules.llm.CausalLMBackbone.embed``, :data:`zoo.modules.llm.INJECT` positions);
5. ``prompt_scale="embedding"`` (default): each soft prompt RMS-normalised and multiplied by a learned gain that
   starts at the RMS of the LM's token embeddings, so the soft prompts enter on the scale of the text tokens beside
   them. ``"free"`` leaves the projection's output as it is: on MovieLens-100K the free soft prompts grew to 18x
   the norm of the (tiny, from-scratch) LM's token embeddings and the LM's output ignored them (shuffling them
   across users changed the first title token's distribution by a KL of 1e-7), so every user got the same titles.

The paper's body could not be read: the encoder, K and the resampler are the zoo's design
(``../shared/docs/methods-next.md`` section 4).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange, repeat
from torch import nn

from zoo.errors import ConfigError

TOKEN_MODES = ("per_item", "queries")
SCALE_MODES = ("embedding", "free")
RATING_LEVELS = 10  # ratings are rounded into 1..10 (0 = no rating)


@dataclass
class UserEmbeddingConfig:
    """The module's fields (mixed into the UEM model's ``Config``)."""

    tokens: str = "queries"  # per_item: one soft token per history item | queries: K learned query tokens
    num_tokens: int = 8  # K (tokens=queries)
    module_dim: int = 128  # width d of the module's transformer
    module_layers: int = 2  # transformer encoder layers over the history (and resampler layers)
    module_heads: int = 4
    module_dropout: float = 0.1
    use_ratings: bool = True  # add a learned embedding of the user's rating of each item (when the corpus has ratings)
    prompt_scale: str = "embedding"  # embedding: soft prompts on the scale of the LM's token embeddings | free


class Resampler(nn.Module):
    """K learned queries that cross-attend to ``[history; queries]`` (pre-norm, Flamingo's Perceiver resampler)."""

    def __init__(self, dim: int, num_queries: int, layers: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.queries = nn.Parameter(torch.randn(num_queries, dim) * 0.02)
        self.layers = nn.ModuleList()
        for _ in range(layers):
            self.layers.append(
                nn.ModuleDict(
                    {
                        "norm_kv": nn.LayerNorm(dim),
                        "norm_q": nn.LayerNorm(dim),
                        "attn": nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True),
                        "mlp": nn.Sequential(
                            nn.LayerNorm(dim), nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)
                        ),
                    }
                )
            )

    def forward(self, history: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, L, d] encoded history and its mask [B, L] (True = real item) -> [B, K, d]."""
        q = repeat(self.queries, "k d -> b k d", b=len(history))
        keep = torch.cat([mask, torch.ones_like(mask[:, :1]).expand(-1, q.shape[1])], dim=1)
        for layer in self.layers:
            kv = torch.cat([layer["norm_kv"](history), layer["norm_q"](q)], dim=1)
            attended, _ = layer["attn"](layer["norm_q"](q), kv, kv, key_padding_mask=~keep, need_weights=False)
            q = q + attended
            q = q + layer["mlp"](q)
        return q


class UserEmbeddingModule(nn.Module):
    """History item vectors [B, L, d_enc] (left-padded, mask [B, L]) -> soft prompts [B, S, d_lm] and their mask
    [B, S] (S = K for ``queries``; S = L, masked like the history, for ``per_item``)."""

    def __init__(
        self,
        cfg: UserEmbeddingConfig,
        input_dim: int,
        lm_dim: int,
        max_len: int,
        with_ratings: bool,
        embedding_rms: float = 1.0,
    ) -> None:
        """``embedding_rms``: the RMS of the LM's token embeddings, the starting gain of ``prompt_scale=embedding``."""
        super().__init__()
        if cfg.tokens not in TOKEN_MODES:
            raise ConfigError(f"unknown model.tokens '{cfg.tokens}' ({' | '.join(TOKEN_MODES)})")
        if cfg.prompt_scale not in SCALE_MODES:
            raise ConfigError(f"unknown model.prompt_scale '{cfg.prompt_scale}' ({' | '.join(SCALE_MODES)})")
        if cfg.tokens == "queries" and cfg.num_tokens < 1:
            raise ConfigError(f"model.num_tokens must be >= 1 with model.tokens=queries, got {cfg.num_tokens}")
        if cfg.module_dim % cfg.module_heads:
            raise ConfigError(
                f"model.module_dim={cfg.module_dim} must be a multiple of model.module_heads={cfg.module_heads}"
            )
        d = cfg.module_dim
        self.tokens = cfg.tokens
        self.project_in = nn.Linear(input_dim, d)
        self.recency = nn.Embedding(max_len, d)
        self.rating = nn.Embedding(RATING_LEVELS + 1, d, padding_idx=0) if with_ratings else None
        layer = nn.TransformerEncoderLayer(
            d, cfg.module_heads, 4 * d, cfg.module_dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, cfg.module_layers, enable_nested_tensor=False)
        self.resampler = (
            Resampler(d, cfg.num_tokens, cfg.module_layers, cfg.module_heads, cfg.module_dropout)
            if cfg.tokens == "queries"
            else None
        )
        self.project_out = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, lm_dim))
        self.gain = nn.Parameter(torch.tensor(float(embedding_rms))) if cfg.prompt_scale == "embedding" else None
        self.max_len = max_len

    def scale(self, out: torch.Tensor) -> torch.Tensor:
        """``prompt_scale=embedding``: every soft prompt at RMS ``gain`` (the LM's token-embedding RMS at start)."""
        if self.gain is None:
            return out
        return out * torch.rsqrt(out.pow(2).mean(-1, keepdim=True) + 1e-6) * self.gain

    def forward(
        self, vectors: torch.Tensor, mask: torch.Tensor, ratings: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        length = vectors.shape[1]
        if length > self.max_len:
            raise ConfigError(f"a history of {length} items is longer than the module's {self.max_len} positions")
        mask = mask.bool()
        # recency: the last column (the most recent item of a left-padded history) is position 0
        recency = torch.arange(length - 1, -1, -1, device=vectors.device)
        x = self.project_in(vectors) + rearrange(self.recency(recency), "l d -> 1 l d")
        if self.rating is not None and ratings is not None:
            x = x + self.rating(ratings.clamp(0, RATING_LEVELS))
        # a row without any item (never produced by the DataModules) would make attention NaN: keep its last slot
        attend = mask.clone()
        attend[:, -1] |= ~mask.any(dim=1)
        x = self.encoder(x, src_key_padding_mask=~attend)
        if self.resampler is None:
            return self.scale(self.project_out(x)), mask
        out = self.scale(self.project_out(self.resampler(x, attend)))
        return out, torch.ones(out.shape[:2], dtype=torch.bool, device=out.device)


def rating_levels(ratings: torch.Tensor) -> torch.Tensor:
    """Ratings (any scale up to 10; 0 or NaN = none) -> integer levels 0..10."""
    return torch.nan_to_num(ratings, nan=0.0).round().clamp(0, RATING_LEVELS).long()
