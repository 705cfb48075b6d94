"""The M-Former of Laser (arXiv 2409.01605): a BLIP-2-style querying transformer whose learned query tokens read a
user's collaborative item embeddings, with a mixture of query experts chosen by a router.

* **Layers** are BERT-style (post-LayerNorm self-attention, cross-attention, feed-forward). Cross-attention to the
  projected item embeddings sits in every ``cross_every``-th layer (layer 0, 2, ... for 2), and the query
  positions have feed-forward weights of their own: the text positions (stage-1 ITC only) use the text FFN.
* **Experts**: E sets of Q learned query tokens ([E, Q, H], N(0, 0.02)); one expert is a full set of queries.
* **Router** over the history items (Linear(H -> E) on the projected item embeddings), top-k experts per user,
  their outputs mixed by the gate weights; ``load_balance_loss`` is ``alpha * E * sum_e p_e f_e``. Stage 1 routes
  top-k (k = 3 in the paper), stage 2 top-1.

Router variants (``mformer_router``):

* ``faithful``: the release: per-item softmax over experts with padded items zeroed, the mean over the padded
  length, top-k of that mean, gate weights = softmax over the selected *probabilities*; f_e counts the top-k picks
  of every position, padded ones included.
* ``masked`` (default): the mean over the real items only, gate weights = softmax over the selected mean
  *logits*, f_e over real items. The default because the faithful router's padded mean shrinks the scores of short
  histories (the ranking of experts then depends on the padding length) and its softmax over probabilities in
  [0, 1] gives almost uniform gates (0.3 / 0.2 / 0.1 -> 0.37 / 0.33 / 0.30), so top-k mixing barely weighs the
  router; counting padded positions in f_e biases the balance term towards the experts that win ties at zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from zoo.errors import ConfigError

ROUTERS = ("faithful", "masked")


@dataclass
class MFormerConfig:
    """M-Former fields (mixed into Laser's ``Config``); the paper's sizes: hidden 768, 12 layers, 12 heads, FFN
    3072, 8 experts x 32 queries, top-3 (stage 1) / top-1 (stage 2), alpha 0.01."""

    mformer_hidden: int = 64
    mformer_layers: int = 2
    mformer_heads: int = 2
    mformer_ffn: int = 256
    mformer_dropout: float = 0.1
    cross_every: int = 2  # cross-attention in layers 0, cross_every, 2 * cross_every, ...
    num_experts: int = 4
    num_queries: int = 4
    top_k_stage1: int = 2
    top_k_stage2: int = 1
    mformer_router: str = "masked"  # masked | faithful (see the module docstring)
    balance_alpha: float = 0.01


def check_config(m) -> None:
    """One-line errors for impossible M-Former settings."""
    if m.mformer_router not in ROUTERS:
        raise ConfigError(f"unknown model.mformer_router '{m.mformer_router}' ({' | '.join(ROUTERS)})")
    if m.mformer_hidden % m.mformer_heads:
        raise ConfigError(
            f"model.mformer_hidden={m.mformer_hidden} must be a multiple of model.mformer_heads={m.mformer_heads}"
        )
    if min(m.mformer_layers, m.cross_every, m.num_experts, m.num_queries) < 1:
        raise ConfigError("model.mformer_layers, cross_every, num_experts and num_queries must be >= 1")
    for key in ("top_k_stage1", "top_k_stage2"):
        if not 1 <= int(getattr(m, key)) <= m.num_experts:
            raise ConfigError(f"model.{key} must be in 1..model.num_experts={m.num_experts}")


class Attention(nn.Module):
    """Multi-head attention of ``x`` over ``context`` (``mask`` [B, S] True = attend)."""

    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.query, self.key, self.value = (nn.Linear(hidden, hidden) for _ in range(3))
        self.out = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q, k, v = (
            rearrange(proj(t), "b t (h d) -> b h t d", h=self.heads)
            for proj, t in ((self.query, x), (self.key, context), (self.value, context))
        )
        attend = rearrange(mask.bool(), "b s -> b 1 1 s")
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attend, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out(rearrange(out, "b h t d -> b t (h d)"))


class FeedForward(nn.Module):
    """BERT's intermediate + output block: LN(x + W2 gelu(W1 x))."""

    def __init__(self, hidden: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.inner, self.outer = nn.Linear(hidden, ffn), nn.Linear(ffn, hidden)
        self.norm, self.drop = nn.LayerNorm(hidden, eps=1e-12), nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.drop(self.outer(F.gelu(self.inner(x)))))


class MFormerLayer(nn.Module):
    def __init__(self, m: MFormerConfig, cross: bool, text: bool) -> None:
        super().__init__()
        h, drop = m.mformer_hidden, m.mformer_dropout
        self.self_attention = Attention(h, m.mformer_heads, drop)
        self.self_norm = nn.LayerNorm(h, eps=1e-12)
        self.cross_attention = Attention(h, m.mformer_heads, drop) if cross else None
        self.cross_norm = nn.LayerNorm(h, eps=1e-12) if cross else None
        self.ffn_query = FeedForward(h, m.mformer_ffn, drop)  # the query positions' own FFN
        self.ffn_text = FeedForward(h, m.mformer_ffn, drop) if text else None
        self.drop = nn.Dropout(drop)

    def forward(self, x, mask, items=None, item_mask=None, query: bool = True) -> torch.Tensor:
        x = self.self_norm(x + self.drop(self.self_attention(x, x, mask)))
        if query and self.cross_attention is not None:
            x = self.cross_norm(x + self.drop(self.cross_attention(x, items, item_mask)))
        return (self.ffn_query if query else self.ffn_text)(x)


@dataclass
class Routing:
    experts: torch.Tensor  # [B, k] selected expert indices
    gates: torch.Tensor  # [B, k] gate weights (each row sums to 1)
    balance: torch.Tensor  # scalar alpha * E * sum_e p_e f_e


def load_balance_loss(probs: torch.Tensor, picks: torch.Tensor, valid: torch.Tensor, alpha: float) -> torch.Tensor:
    """``alpha * E * sum_e p_e f_e``: ``probs`` [B, L, E] per-item router probabilities (zero at positions that
    do not count), ``picks`` [B, L, k] each position's top-k experts, ``valid`` [B, L] the positions whose picks
    count. p_e = sum of probabilities / #real items, f_e = #picks of e / #real items, #real items = the positions
    with a nonzero probability row. With top-1 routing spread evenly over the experts it equals alpha."""
    experts = probs.shape[-1]
    real = (probs.sum(-1) > 0).sum().clamp(min=1)
    p = probs.sum((0, 1)) / real
    counts = F.one_hot(picks, experts).to(probs.dtype) * valid[..., None, None].to(probs.dtype)
    f = counts.sum((0, 1, 2)) / real
    return alpha * experts * (p * f).sum()


class Router(nn.Module):
    """Top-k experts per user from its history items ([B, L, H] projected embeddings, mask [B, L])."""

    def __init__(self, hidden: int, experts: int, variant: str, alpha: float) -> None:
        super().__init__()
        if variant not in ROUTERS:
            raise ConfigError(f"unknown model.mformer_router '{variant}' ({' | '.join(ROUTERS)})")
        self.gate = nn.Linear(hidden, experts)
        self.variant, self.alpha = variant, alpha

    def forward(self, items: torch.Tensor, mask: torch.Tensor, k: int) -> Routing:
        logits = self.gate(items).float()  # [B, L, E]
        real = mask.bool()
        weights = real[..., None].float()
        probs = logits.softmax(-1) * weights  # padded items score 0
        if self.variant == "faithful":
            mean = probs.mean(1)  # over the padded length
            top, experts = mean.topk(k, dim=-1)
            picks = probs.topk(k, dim=-1).indices  # padded positions pick too (ties at zero)
            balance = load_balance_loss(probs, picks, torch.ones_like(real), self.alpha)
        else:
            mean = (logits * weights).sum(1) / weights.sum(1).clamp(min=1.0)
            top, experts = mean.topk(k, dim=-1)
            picks = logits.topk(k, dim=-1).indices
            balance = load_balance_loss(probs, picks, real, self.alpha)
        return Routing(experts, top.softmax(-1), balance)


class MFormer(nn.Module):
    """Item embeddings [B, L, d_cf] (+ mask) -> Q query outputs [B, Q, H] mixed over the routed experts, and the
    balance loss. ``text_vocab`` adds the text side (word and position embeddings, text FFNs) that stage-1 ITC
    encodes the user prompt with; stage 2 builds the module without it."""

    def __init__(self, m: MFormerConfig, cf_dim: int, text_vocab: int = 0, max_text_len: int = 512) -> None:
        super().__init__()
        check_config(m)
        h = m.mformer_hidden
        self.item_proj = nn.Linear(cf_dim, h)
        self.experts = nn.Parameter(torch.randn(m.num_experts, m.num_queries, h) * 0.02)
        self.router = Router(h, m.num_experts, m.mformer_router, m.balance_alpha) if m.num_experts > 1 else None
        self.embed_norm = nn.LayerNorm(h, eps=1e-12)
        self.embed_drop = nn.Dropout(m.mformer_dropout)
        text = text_vocab > 0
        self.layers = nn.ModuleList(
            MFormerLayer(m, cross=i % m.cross_every == 0, text=text) for i in range(m.mformer_layers)
        )
        if text:
            self.word_embeddings = nn.Embedding(text_vocab, h)
            self.position_embeddings = nn.Embedding(max_text_len, h)

    def route(self, items: torch.Tensor, mask: torch.Tensor, k: int) -> Routing:
        batch = len(items)
        if self.router is None:  # one expert: nothing to route
            zero = items.new_zeros(())
            return Routing(items.new_zeros(batch, 1, dtype=torch.long), items.new_ones(batch, 1), zero)
        return self.router(items, mask, k)

    def forward(self, cf: torch.Tensor, mask: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        mask = mask.bool()
        mask = mask | ~mask.any(1, keepdim=True)  # a row without items attends to its (padding) vectors
        items = self.item_proj(cf)
        routing = self.route(items, mask, k)
        k = routing.experts.shape[1]
        queries = rearrange(self.experts[routing.experts], "b k q h -> (b k) q h")
        x = self.embed_drop(self.embed_norm(queries))
        context, context_mask = repeat(items, "b l h -> (b k) l h", k=k), repeat(mask, "b l -> (b k) l", k=k)
        self_mask = x.new_ones(x.shape[:2], dtype=torch.bool)
        for layer in self.layers:
            x = layer(x, self_mask, context, context_mask, query=True)
        out = rearrange(x, "(b k) q h -> b k q h", k=k)
        return torch.einsum("bk,bkqh->bqh", routing.gates.to(out.dtype), out), routing.balance

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Text hidden states [B, T, H] (self-attention only, the text FFNs): stage-1 ITC's text encoder."""
        if not hasattr(self, "word_embeddings"):
            raise ConfigError("this M-Former was built without its text side (text_vocab=0)")
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.embed_drop(self.embed_norm(self.word_embeddings(ids) + self.position_embeddings(positions)))
        for layer in self.layers:
            x = layer(x, mask, query=False)
        return x
