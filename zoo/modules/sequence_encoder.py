"""A causal self-attention encoder of item sequences (SASRec's network), reusable by any ID-based method.

Input: left-padded item ids [B, L] (0 = padding, last column = most recent). Item embeddings plus learned
positions, layer norm and dropout, then ``num_layers`` post-norm transformer blocks (attention -> add & norm ->
feed-forward -> add & norm, as in SASRec's public re-implementations S3-Rec and RecBole). Each position attends to
itself and the earlier non-padding positions. Output: [B, L, d] hidden states; the item embedding table is exposed
for tied scoring.

Speed on CPU: attention is ``F.scaled_dot_product_attention`` (fused kernel) with one boolean mask per batch, and
:meth:`SequenceEncoder.forward` never computes on padding columns shared by a group of rows: it sorts the rows by
length, groups them, and crops each group's leading padding (left padding makes it a prefix). On short-sequence
datasets such as Amazon Beauty (mean length 9, max length 50) this removes most of the work.

Positions count from the oldest item of each row (0, 1, ...), as in RecBole's right-padded SASRec: a prefix then
has the same positions whether it is a row of its own or the start of a longer row, so training every position
of a sequence in one pass is exactly training on each prefix, and cropping padding changes no output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from zoo.errors import ConfigError
from zoo.modules.batching import length_groups

ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu}


class SelfAttentionBlock(nn.Module):
    """Multi-head self-attention and a position-wise feed-forward network, each followed by add & layer norm."""

    def __init__(self, d: int, heads: int, inner: int, dropout: float, attn_dropout: float, act, eps: float) -> None:
        super().__init__()
        if d % heads:
            raise ConfigError(f"hidden size {d} is not divisible by the number of heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.attn_dropout = attn_dropout
        self.norm1 = nn.LayerNorm(d, eps=eps)
        self.ff_in = nn.Linear(d, inner)
        self.ff_out = nn.Linear(inner, d)
        self.norm2 = nn.LayerNorm(d, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.act = act

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # split: [B, L, 3*d] -> q, k, v of [B, heads, L, d/heads]; merge the heads back to [B, L, d] after
        q, k, v = rearrange(self.qkv(x), "b l (three h e) -> three b h l e", three=3, h=self.heads)
        attended = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.attn_dropout if self.training else 0.0
        )
        attended = rearrange(attended, "b h l e -> b l (h e)")
        x = self.norm1(x + self.dropout(self.out(attended)))
        return self.norm2(x + self.dropout(self.ff_out(self.act(self.ff_in(x)))))


class SequenceEncoder(nn.Module):
    """Item + position embeddings and causal self-attention blocks; ``forward(history) -> [B, L, d]``."""

    GROUP_ROWS = 32  # rows per length group when a batch mixes short and long histories

    def __init__(
        self,
        num_items: int,
        max_len: int,
        hidden_size: int = 64,
        num_layers: int = 2,
        num_heads: int = 2,
        inner_size: int = 256,
        dropout: float = 0.5,
        attn_dropout: float = 0.5,
        activation: str = "gelu",
        layer_norm_eps: float = 1e-12,
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ConfigError(f"unknown activation '{activation}' ({' | '.join(ACTIVATIONS)})")
        self.max_len = max_len
        self.item_embedding = nn.Embedding(num_items + 1, hidden_size, padding_idx=0)
        self.position_embedding = nn.Embedding(max_len, hidden_size)
        self.norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout)
        act = ACTIVATIONS[activation]
        self.blocks = nn.ModuleList(
            SelfAttentionBlock(hidden_size, num_heads, inner_size, dropout, attn_dropout, act, layer_norm_eps)
            for _ in range(num_layers)
        )
        self.apply(lambda m: _init_weights(m, init_std))
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        """Hidden state at every position of ``history`` ([B, L] left-padded ids, L <= max_len) -> [B, L, d];
        padding positions are zeros.

        Rows are sorted by length and encoded in groups of ``GROUP_ROWS``, each cropped to its longest row, when
        that saves at least a quarter of the work (short-sequence datasets); the result is the same as encoding
        every row alone.
        """
        batch, length = history.shape
        if length > self.max_len:
            raise ConfigError(f"history of length {length} exceeds the encoder's max_len {self.max_len}")
        lengths = (history != 0).sum(dim=1)
        groups = length_groups(lengths, rows=self.GROUP_ROWS, descending=True)
        widths = [max(int(lengths[rows].max()), 1) for rows in groups]
        if sum(w * len(rows) for w, rows in zip(widths, groups)) > 0.75 * batch * max(widths[0], 1):
            return self._encode_cropped(history)
        pieces = []
        for width, rows in zip(widths, groups):
            hidden = self._encode_cropped(history[rows, length - width :])
            pieces.append(torch.cat([hidden.new_zeros(len(rows), length - width, hidden.shape[-1]), hidden], dim=1))
        return torch.cat(pieces)[torch.cat(groups).argsort()]

    def _encode_cropped(self, history: torch.Tensor) -> torch.Tensor:
        """Encode ``history`` after dropping the leading columns that are padding in every row."""
        batch, length = history.shape
        valid = history != 0
        first = int(valid.any(dim=0).int().argmax()) if valid.any() else length - 1
        keep = valid[:, first:]
        positions = (keep.cumsum(dim=1) - 1).clamp(min=0)
        x = self.item_embedding(history[:, first:]) + self.position_embedding(positions)
        x = self.dropout(self.norm(x))
        mask = attention_mask(keep)
        for block in self.blocks:
            x = block(x, mask)
        x = x * keep.unsqueeze(-1)
        if first == 0:
            return x
        return torch.cat([x.new_zeros(batch, first, x.shape[-1]), x], dim=1)


def attention_mask(valid: torch.Tensor) -> torch.Tensor:
    """Boolean [B, 1, L, L] mask (True = may attend): causal, padding keys hidden. A padding query attends to
    itself only, so that no row of the softmax is empty (its output is discarded)."""
    length = valid.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=valid.device).tril()
    eye = torch.eye(length, dtype=torch.bool, device=valid.device)
    return (causal & (valid.unsqueeze(1) | eye)).unsqueeze(1)


def _init_weights(module: nn.Module, std: float) -> None:
    """Normal(0, std) weights, zero biases, unit layer norms (BERT / RecBole initialisation)."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
