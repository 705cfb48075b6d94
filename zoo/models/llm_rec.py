"""BIGRec-style generative LLM recommender (``llmrec``): a causal LM reads an instruction prompt listing the
user's history as titles and generates the next item's title; ranking = beam search constrained to the titles
of real items (``zoo.modules.title_trie``), each finished beam mapped back to exactly one item.

The loss is any registered token loss: ``lml`` (cross-entropy over the whole vocabulary), ``msl`` / ``msl_ats``
(softmax over the trie-valid tokens only). A recipe switches between them with ``loss.name`` and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from zoo.data.datamodule import DataSpec
from zoo.data.prompts import ALPACA, PromptFrame, PromptTokens, domain_prompt, pack_left, prompt_frame
from zoo.errors import DataError
from zoo.models.base import ModelConfig, RecModel
from zoo.modules.llm import CausalLMBackbone, LLMConfig, generate_items
from zoo.modules.title_trie import TitleTrie
from zoo.registry import MODELS


@dataclass
class LLMRecConfig(ModelConfig, LLMConfig):
    name: str = "llmrec"
    max_prompt_tokens: int = 512  # the oldest history titles are dropped beyond this
    domain: str = "items"  # prompt wording: books | toys | movies | beauty | items (zoo.data.prompts)
    instruction: Optional[str] = None  # overrides the domain's instruction
    history_prefix: Optional[str] = None  # overrides the domain's "The user has ... before: "


class HistoryPromptEncoder:
    """Batch transform: history ids -> tokenised prompts; target -> response tokens (quoted title + EOS).

    Adds ``input_ids``/``attention_mask``/``labels`` (prompt + response, for teacher forcing) and
    ``prompt_ids``/``prompt_mask`` (prompt only, for generation), all left-padded. A plain object (not the
    LightningModule), so DataLoader workers can pickle it cheaply.
    """

    def __init__(
        self,
        prompts: PromptTokens,
        titles: TitleTrie,
        instruction: str,
        history_prefix: str,
        pad_id: int,
        frame: PromptFrame = ALPACA,
    ):
        self.prompts = prompts
        self.titles = titles
        self.pad_id = pad_id
        self.head = prompts.text(frame.head(instruction, history_prefix))
        self.tail = prompts.text(frame.closing)

    def prompt(self, history: list[int]) -> list[int]:
        return self.prompts.fit_history(self.head, history, self.tail)

    def __call__(self, batch: dict) -> dict:
        prompts = [self.prompt(row) for row in batch["history"].tolist()]
        return encode_prompts(batch, prompts, self.titles, self.pad_id)


def encode_prompts(
    batch: dict, prompts: list[list[int]], titles: TitleTrie, pad_id: int, eval_prompts: list[list[int]] | None = None
) -> dict:
    """Add teacher-forcing tensors (``prompts`` + target title) and prompt-only tensors for generation
    (``eval_prompts``, default the same prompts) to ``batch``."""
    responses = [titles.response(t) for t in batch["target"].tolist()]
    return pack_prompts(batch, prompts, responses, pad_id, eval_prompts)


def pack_prompts(
    batch: dict, prompts: list[list[int]], responses: list[list[int]], pad_id: int, eval_prompts=None
) -> dict:
    """Add ``input_ids`` / ``attention_mask`` / ``labels`` (left-padded prompt + response, labels on the response
    only) and ``prompt_ids`` / ``prompt_mask`` (``eval_prompts``, default the prompts alone) to ``batch``."""
    full = pack_left(prompts, responses, pad_id)
    prompt_only = pack_left(prompts if eval_prompts is None else eval_prompts, None, pad_id)
    batch.update(
        input_ids=full.input_ids,
        attention_mask=full.attention_mask,
        labels=full.labels,
        prompt_ids=prompt_only.input_ids,
        prompt_mask=prompt_only.attention_mask,
    )
    return batch


@MODELS.register("llmrec")
class LLMRec(RecModel):
    """The prompt lists the last ``data.max_len`` history items (BIGRec / MSL windows hold at most 10)."""

    Config = LLMRecConfig
    task = "generative"
    loss_kind = "token"

    def __init__(self, cfg, datamodule, artifacts: dict | None = None) -> None:
        super().__init__(cfg, datamodule, artifacts)
        m = cfg.model
        self.backbone = CausalLMBackbone(m)
        titles = datamodule.corpus.item_text.get("title")
        if not titles:
            raise DataError(f"{datamodule.corpus.name}: model '{m.name}' needs item titles (item_text['title'])")
        self.titles = TitleTrie(titles, self.backbone.tokenizer, self.backbone.eos_token_id)
        self.prompts = PromptTokens(self.backbone.tokenizer, self.titles.quoted, m.max_prompt_tokens)
        self.frame = prompt_frame(self.backbone.tokenizer, m.chat_template)  # Alpaca, or the chat template
        self.loss.connect(trie=self.titles.trie)

    def _instruction(self) -> tuple[str, str]:
        m = self.cfg.model
        instruction, prefix = domain_prompt(m.domain)
        return m.instruction or instruction, m.history_prefix if m.history_prefix is not None else prefix

    def data_spec(self) -> DataSpec:
        instruction, prefix = self._instruction()
        encoder = HistoryPromptEncoder(
            self.prompts, self.titles, instruction, prefix, self.backbone.pad_token_id, frame=self.frame
        )
        return DataSpec(train_mode="prefix", transform=encoder)

    def reloadable_frozen_names(self) -> list[str]:
        return [f"backbone.{name}" for name in self.backbone.reloadable_frozen_names()]

    def fsdp_wrap_modules(self) -> list[type]:
        return self.backbone.decoder_block_classes()

    def soft_prompts(self, batch: dict) -> torch.Tensor | None:
        """Vectors for the prompts' :data:`zoo.modules.llm.INJECT` positions (UEM's user tokens); none here."""
        return None

    def token_logits(self, batch: dict, predicts: torch.Tensor, prompts: torch.Tensor | None) -> torch.Tensor:
        """The logits at the ``predicts`` positions ([P, V], row-major), ``prompts`` in the INJECT positions."""
        return self.backbone(batch["input_ids"], batch["attention_mask"], predicts, prompts)

    def compute_loss(self, batch: dict) -> torch.Tensor:
        return self.token_loss(batch, self.soft_prompts(batch))

    def token_loss(self, batch: dict, prompts: torch.Tensor | None) -> torch.Tensor:
        """Token loss on the response tokens only: their logits are computed flattened into one row
        ([1, P, V], responses back to back), which every token loss accepts (see ``zoo.losses.msl``)."""
        labels = batch["labels"]
        predicts = torch.zeros_like(labels, dtype=torch.bool)
        predicts[:, :-1] = labels[:, 1:] != -100
        logits = self.token_logits(batch, predicts, prompts)
        loss = self.loss(logits.unsqueeze(0), labels[:, 1:][predicts[:, :-1]].unsqueeze(0))
        tau = getattr(self.loss, "tau", None)
        if isinstance(tau, torch.Tensor) and self._trainer is not None:
            self.log("train/tau", tau, batch_size=len(labels))
        return loss

    def rank(self, batch: dict, k: int, candidates: torch.Tensor | None = None) -> torch.Tensor:
        """Beam search over the titles of all items, or of each row's ``candidates``."""
        return self.rank_scored(batch, k, candidates)[0]

    def rank_scored(self, batch: dict, k: int, candidates: torch.Tensor | None = None):
        """``rank`` with each item's beam log-probability ([B, k] ids, [B, k] scores)."""
        return generate_items(
            self.backbone,
            batch["prompt_ids"],
            batch["prompt_mask"],
            self.titles.trie,
            num_beams=k,
            candidates=candidates,
            sequences=self.titles.sequences,
            renormalize=bool(self.cfg.eval.renormalize),
            **self.decoding_inputs(batch),
        )

    def decoding_inputs(self, batch: dict) -> dict:
        """What beam search gets besides the prompts: the INJECT vectors (and, in subclasses, a logit bias)."""
        return {"vectors": self.soft_prompts(batch)}
