"""TIGER (Rajput et al., NeurIPS 2023): generative retrieval with Semantic IDs.

The item embeddings and the RQ-VAE Semantic IDs come from the ``semantic_ids`` stage (``zoo.stages``: computed
once, cached, reused); a T5 encoder-decoder trained from scratch reads a hashed user token
and the Semantic IDs of the last ``data.max_len`` items and generates the next item's Semantic ID; inference is a
beam search constrained by the prefix trie of valid IDs, so every recommended ID is a real item.

Vocabulary: 0 = padding (also the decoder start token), 1 = end of input, then ``num_levels + 1`` blocks of
``codebook_size`` code tokens (the last block holds the collision code), then ``num_user_tokens`` user tokens
(user index mod ``num_user_tokens``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import T5ForConditionalGeneration

from zoo.data.datamodule import DataSpec, SequentialDataModule
from zoo.errors import ConfigError
from zoo.models.base import RecModel
from zoo.models.rqvae import SemanticIdConfig
from zoo.modules.batching import length_groups
from zoo.modules.beam_search import BeamSearchResult, beam_search, candidate_beam_search
from zoo.modules.t5 import t5_from_fields
from zoo.modules.trie import ItemTrie
from zoo.registry import MODELS

PAD, EOS, CODE_OFFSET = 0, 1, 2


@dataclass
class TigerConfig(SemanticIdConfig):
    name: str = "tiger"
    d_model: int = 128
    num_heads: int = 6
    d_kv: int = 64
    d_ff: int = 1024
    num_encoder_layers: int = 4
    num_decoder_layers: int = 4
    dropout: float = 0.1
    feed_forward_proj: str = "relu"
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    num_user_tokens: int = 2000  # user index mod this many user tokens
    length_groups: int = 4  # run each batch as this many groups of similar input length, each padded only to its
    # own longest row: the same result with far fewer padded tokens (Beauty: median history 4 of 20 items)


class SemanticIdInputs:
    """The DataModule transform: item histories -> T5 token inputs, targets -> Semantic-ID labels.

    ``input_ids`` = [user token, codes of each history item oldest first, EOS], right-padded to the longest row
    of the batch; ``labels`` = the target item's code tokens. A plain object (not the model) so that DataLoader
    workers pickle only the token table."""

    def __init__(self, num_items: int, id_length: int, user_offset: int, num_user_tokens: int) -> None:
        self.item_tokens = torch.zeros(num_items + 1, id_length, dtype=torch.long)  # row 0: padding
        self.user_offset, self.num_user_tokens = user_offset, num_user_tokens

    def __call__(self, batch: dict) -> dict:
        history = batch["history"]
        rows, hist_len = history.shape
        id_len = self.item_tokens.shape[1]
        lengths = (history > 0).sum(1)
        cols = torch.arange(hist_len)
        aligned = history.gather(1, (cols[None, :] + (hist_len - lengths)[:, None]).clamp(max=hist_len - 1))
        aligned = torch.where(cols[None, :] < lengths[:, None], aligned, torch.zeros_like(aligned))  # left-aligned
        seq_len = 2 + lengths * id_len  # user token + codes + EOS
        width = int(seq_len.max())
        input_ids = torch.zeros(rows, 1 + hist_len * id_len + 1, dtype=torch.long)
        input_ids[:, 0] = self.user_offset + torch.remainder(batch["user"], self.num_user_tokens)
        input_ids[:, 1 : 1 + hist_len * id_len] = self.item_tokens[aligned].reshape(rows, -1)
        input_ids[torch.arange(rows), seq_len - 1] = EOS
        batch["input_ids"] = input_ids[:, :width]
        batch["attention_mask"] = torch.arange(width)[None, :] < seq_len[:, None]
        if "target" in batch:
            batch["labels"] = self.item_tokens[batch["target"]]
        return batch


class T5StepDecoder:
    """Incremental T5 decoding for beam search (``zoo.modules.beam_search`` step protocol).

    The encoder runs once per user; each decoder layer's cross-attention keys/values are computed once from its
    output and shared by all beams of that user (beams are the query positions of one cross-attention call),
    and self-attention keys/values are cached per beam and follow the beams' parents. Uses the weights of a
    ``T5ForConditionalGeneration`` in eval mode; matches its full forward pass (tested)."""

    def __init__(self, t5: T5ForConditionalGeneration, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        self.t5 = t5
        self.decoder = t5.get_decoder()
        encoded = t5.get_encoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        self.batch, length, _ = encoded.shape
        self.cross: list[tuple[torch.Tensor, torch.Tensor]] = []
        for block in self.decoder.block:
            attn = block.layer[1].EncDecAttention
            shape = (self.batch, length, attn.n_heads, attn.key_value_proj_dim)
            self.cross.append(
                (attn.k(encoded).view(shape).transpose(1, 2), attn.v(encoded).view(shape).transpose(1, 2))
            )
        mask_value = torch.finfo(encoded.dtype).min
        self.cross_bias = torch.zeros(self.batch, 1, 1, length, dtype=encoded.dtype, device=encoded.device)
        self.cross_bias.masked_fill_(~attention_mask.bool()[:, None, None, :], mask_value)
        self.self_cache: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(self.decoder.block)
        self.steps = 0
        cfg = t5.config
        self.output_scale = cfg.d_model**-0.5 if getattr(cfg, "scale_decoder_outputs", cfg.tie_word_embeddings) else 1.0

    def __call__(self, parents: torch.Tensor | None, tokens: torch.Tensor | None) -> torch.Tensor:
        if parents is None:
            tokens = torch.full((self.batch, 1), self.t5.config.decoder_start_token_id, device=self.cross_bias.device)
        else:
            rows = torch.arange(self.batch, device=parents.device)[:, None]
            self.self_cache = [(k[rows, parents], v[rows, parents]) for k, v in self.self_cache]
        batch, width = tokens.shape
        hidden = self.decoder.embed_tokens(tokens)  # [B, W, d]
        first = self.decoder.block[0].layer[0].SelfAttention
        position_bias = first.compute_bias(1, self.steps + 1, device=hidden.device, past_seen_tokens=self.steps)
        position_bias = position_bias[:, None]  # [1, 1, heads, 1, t+1]
        for i, block in enumerate(self.decoder.block):
            self_attn = block.layer[0]
            attn = self_attn.SelfAttention
            heads, dk = attn.n_heads, attn.key_value_proj_dim
            x = self_attn.layer_norm(hidden)
            q, k, v = (proj(x).view(batch, width, heads, 1, dk) for proj in (attn.q, attn.k, attn.v))
            if self.self_cache[i] is not None:
                k = torch.cat([self.self_cache[i][0], k], dim=3)
                v = torch.cat([self.self_cache[i][1], v], dim=3)
            self.self_cache[i] = (k, v)
            weights = torch.softmax(q @ k.transpose(-1, -2) + position_bias, dim=-1)
            hidden = hidden + attn.o((weights @ v).reshape(batch, width, heads * dk))
            cross_attn = block.layer[1]
            attn = cross_attn.EncDecAttention
            q = attn.q(cross_attn.layer_norm(hidden)).view(batch, width, heads, dk).transpose(1, 2)
            keys, values = self.cross[i]
            weights = torch.softmax(q @ keys.transpose(-1, -2) + self.cross_bias, dim=-1)  # [B, heads, W, L]
            hidden = hidden + attn.o((weights @ values).transpose(1, 2).reshape(batch, width, heads * dk))
            hidden = block.layer[2](hidden)
        hidden = self.decoder.final_layer_norm(hidden)
        self.steps += 1
        return self.t5.lm_head(hidden * self.output_scale)


@MODELS.register("tiger")
class Tiger(RecModel):
    Config = TigerConfig
    task = "generative"
    loss_kind = "token"
    test_overrides = (  # tests/test_methods.py: a tiny T5 and a short RQ-VAE stage
        "model.d_model=32",
        "model.num_heads=2",
        "model.d_kv=16",
        "model.d_ff=64",
        "model.num_encoder_layers=1",
        "model.num_decoder_layers=1",
        "model.text_fields=[title]",
        "model.rqvae.hidden_dims=[64]",
        "model.rqvae.epochs=3",
        "model.rqvae.eval_every=3",
        "model.rqvae.restart_every=1",
        "trainer.check_val_every_n_epoch=1",
    )

    stages = ("semantic_ids",)

    def __init__(self, cfg, datamodule: SequentialDataModule, artifacts: dict | None = None) -> None:
        super().__init__(cfg, datamodule, artifacts)
        m = cfg.model
        self.codebook_size = m.rqvae.codebook_size
        self.id_length = m.rqvae.num_levels + 1  # + the collision code
        self.user_offset = CODE_OFFSET + self.id_length * self.codebook_size
        self.vocab_size = self.user_offset + m.num_user_tokens
        self.t5 = t5_from_fields(m, self.vocab_size, PAD, EOS)
        self.inputs = SemanticIdInputs(self.num_items, self.id_length, self.user_offset, m.num_user_tokens)
        self.register_buffer("item_tokens", self.inputs.item_tokens.clone())  # saved with checkpoints
        self.trie: ItemTrie | None = None
        self.semantic_id_metrics: dict[str, float] = {}

    def data_spec(self) -> DataSpec:
        return DataSpec(train_mode="prefix", transform=self.inputs)

    def prepare(self, datamodule: SequentialDataModule) -> None:
        """Install the Semantic IDs of the ``semantic_ids`` stage: the token table and the trie of valid IDs."""
        from zoo.stages import load_codes

        artifact = self.artifacts["semantic_ids"]
        self.set_semantic_ids(torch.as_tensor(load_codes(artifact)))
        metrics = {k: v for k, v in artifact.metrics.items() if not k.startswith("time/") or not artifact.reused}
        self.semantic_id_metrics = {**metrics, "rqvae/reused_cache": float(artifact.reused)}

    def set_semantic_ids(self, codes: torch.Tensor) -> None:
        """Install the Semantic IDs of items 1..N ([N, num_levels + 1] codes, last column = collision code)."""
        if codes.shape != (self.num_items, self.id_length):
            raise ConfigError(
                f"Semantic IDs of shape {tuple(codes.shape)}; expected ({self.num_items}, {self.id_length})"
            )
        worst = int(codes[:, -1].max()) if len(codes) else 0
        if worst >= self.codebook_size:
            raise ConfigError(
                f"{worst + 1} items share one Semantic ID prefix but the collision level has "
                f"{self.codebook_size} codes: train the RQ-VAE longer (model.rqvae.epochs) or enlarge the codebooks"
            )
        offsets = CODE_OFFSET + torch.arange(self.id_length) * self.codebook_size
        tokens = torch.zeros(self.num_items + 1, self.id_length, dtype=torch.long)
        tokens[1:] = codes.long() + offsets
        self.item_tokens.copy_(tokens.to(self.item_tokens.device))
        self.inputs.item_tokens = tokens
        self.trie = ItemTrie(tokens[1:].tolist(), list(range(1, self.num_items + 1)), self.vocab_size)
        self.loss.connect(trie=self.trie)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """A checkpoint carries its Semantic IDs: rebuild the token table and trie from them."""
        tokens = checkpoint["state_dict"]["item_tokens"].cpu()
        offsets = CODE_OFFSET + torch.arange(self.id_length) * self.codebook_size
        self.set_semantic_ids(tokens[1:] - offsets)

    # -- training -----------------------------------------------------------------------------------------------
    def length_groups(self, attention_mask: torch.Tensor) -> list[torch.Tensor]:
        """Row indices split into ``model.length_groups`` groups of similar input length (shortest first)."""
        return length_groups(attention_mask.sum(1), groups=self.cfg.model.length_groups)

    def compute_loss(self, batch: dict) -> torch.Tensor:
        labels, mask = batch["labels"], batch["attention_mask"]
        groups = self.length_groups(mask)
        parts = []
        for rows in groups:
            width = int(mask[rows].sum(1).max())  # inputs are right-padded: trimming the columns changes nothing
            parts.append(
                self.t5(
                    input_ids=batch["input_ids"][rows, :width],
                    attention_mask=mask[rows, :width],
                    decoder_input_ids=self.t5._shift_right(labels[rows]),
                ).logits
            )
        order = torch.cat(groups)
        logits = torch.cat(parts)[torch.argsort(order)]  # back in batch order
        return self.loss(logits, labels)

    # -- inference ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, batch: dict, num_beams: int, constrained: bool = True) -> BeamSearchResult:
        """Beam search over Semantic IDs (constrained to the trie of real items unless ``constrained=False``)."""
        if self.trie is None:
            raise ConfigError("tiger: Semantic IDs are not set (call prepare first)")
        if self.trie.edge_key.device != self.device:
            self.trie.to(self.device)
        mask = batch["attention_mask"]
        groups = self.length_groups(mask)
        results = []
        for rows in groups:
            width = int(mask[rows].sum(1).max())
            step = T5StepDecoder(self.t5, batch["input_ids"][rows, :width], mask[rows, :width])
            results.append(
                beam_search(
                    step,
                    self.trie,
                    len(rows),
                    num_beams,
                    constrained=constrained,
                    pad_token=PAD,
                    renormalize=bool(self.cfg.eval.renormalize),  # beam_search: constrained steps only
                )
            )
        back = torch.argsort(torch.cat(groups))
        width = max(r.tokens.shape[2] for r in results)
        tokens = [torch.nn.functional.pad(r.tokens, (0, width - r.tokens.shape[2]), value=PAD) for r in results]
        return BeamSearchResult(
            items=torch.cat([r.items for r in results])[back],
            scores=torch.cat([r.scores for r in results])[back],
            tokens=torch.cat(tokens)[back],
        )

    def rank(self, batch: dict, k: int, candidates: torch.Tensor | None = None) -> torch.Tensor:
        """Beam search over the Semantic IDs of all items, or of each row's ``candidates``."""
        return self.rank_scored(batch, k, candidates)[0]

    def rank_scored(self, batch: dict, k: int, candidates: torch.Tensor | None = None):
        """``rank`` with each item's beam log-probability ([B, k] ids, [B, k] scores)."""
        if candidates is None:
            result = self.decode(batch, max(k, self.cfg.eval.num_beams))
            return result.items[:, :k], result.scores[:, :k]
        step = T5StepDecoder(self.t5, batch["input_ids"], batch["attention_mask"])
        result = candidate_beam_search(
            step,
            self.item_tokens.tolist(),
            candidates,
            self.vocab_size,
            k,
            pad_token=PAD,
            renormalize=bool(self.cfg.eval.renormalize),
        )
        return result.items, result.scores

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        self.test_results.update(self.semantic_id_metrics)
