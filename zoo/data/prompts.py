"""Instruction prompts of the LLM recommenders, assembled at the token level from cached pieces.

Static text is tokenised once and each item's quoted title once (``TitleTrie.quoted``), so building a batch of
prompts is list concatenation, and the response tokens a model is trained on are exactly the trie sequences it
decodes at inference (no tokenizer merges across the prompt / response boundary). Prompts follow the Alpaca
layout used by BIGRec and MSL::

    Below is an instruction that describes a task, paired with an input that provides further context. ...

    ### Instruction:
    <instruction>

    ### Input:
    <history prefix>"title 1", "title 2", ...

    ### Response:
    "next title"<EOS>

An instruct backbone with a chat template (SmolLM2-Instruct) gets the same instruction and input as one user turn
of its template instead, and the response is the assistant turn (:func:`prompt_frame`).

When a prompt exceeds ``max_prompt_tokens`` the oldest history titles are dropped first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

HEADER = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
)
RESPONSE = "\n\n### Response:\n"
CHAT_PLACEHOLDER = "\x00ZOO\x00"


@dataclass(frozen=True)
class PromptFrame:
    """The text around a prompt's instruction and input: ``opening + instruction + separator + input + closing``,
    after which the model generates the response."""

    opening: str
    separator: str
    closing: str

    def head(self, instruction: str, input_prefix: str = "") -> str:
        return f"{self.opening}{instruction}{self.separator}{input_prefix}"


ALPACA = PromptFrame(f"{HEADER}### Instruction:\n", "\n\n### Input:\n", RESPONSE)


def prompt_frame(tokenizer, mode: str = "auto") -> PromptFrame:
    """The Alpaca frame, or with ``mode="auto"`` and a tokenizer that has a chat template, that template's user
    turn (opening / closing rendered around a placeholder, the generation prompt included)."""
    if mode not in ("auto", "off"):
        from zoo.errors import ConfigError

        raise ConfigError(f"unknown model.chat_template '{mode}' (auto | off)")
    if mode == "off" or not getattr(tokenizer, "chat_template", None):
        return ALPACA
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": CHAT_PLACEHOLDER}], tokenize=False, add_generation_prompt=True
    )
    opening, _, closing = text.partition(CHAT_PLACEHOLDER)
    return PromptFrame(opening, "\n\n", closing)


# instructions of the MSL / BIGRec code, by the dataset's item domain
DOMAIN_PROMPTS = {
    "books": (
        "Given a list of books the user has read before, please recommend a new book that the user likes to the user.",
        "The user has read the following books before: ",
    ),
    "toys": (
        "Given a list of toys the user has played before, please recommend a new toy that the user likes to the user.",
        "The user has played the following toys before: ",
    ),
    "movies": (
        "Given a list of movies the user has watched before, please recommend a new movie that the user likes to "
        "the user.",
        "The user has watched the following movies before: ",
    ),
    "beauty": (
        "Given a list of beauty products the user has used before, please recommend a new beauty product that the "
        "user likes to the user.",
        "The user has used the following beauty products before: ",
    ),
    "items": (
        "Given a list of items the user has interacted with before, please recommend a new item that the user "
        "likes to the user.",
        "The user has interacted with the following items before: ",
    ),
}


def domain_prompt(domain: str) -> tuple[str, str]:
    """(instruction, history prefix) of a domain; an unknown domain is a config error."""
    from zoo.errors import ConfigError
    from zoo.registry import nearest

    if domain not in DOMAIN_PROMPTS:
        raise ConfigError(f"unknown prompt domain '{domain}'; nearest: {nearest(domain, list(DOMAIN_PROMPTS))}")
    return DOMAIN_PROMPTS[domain]


class PromptTokens:
    """Token-level prompt assembly with a cache of tokenised static text."""

    def __init__(self, tokenizer, quoted_titles: Sequence[list[int]], max_prompt_tokens: int) -> None:
        self.tokenizer = tokenizer
        self.quoted = quoted_titles
        self.max_prompt_tokens = max_prompt_tokens
        self._text_cache: dict[str, list[int]] = {}
        self.separator = self.text(", ")

    def text(self, text: str) -> list[int]:
        if text not in self._text_cache:
            self._text_cache[text] = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return self._text_cache[text]

    def title_list(self, items: Sequence[int]) -> list[int]:
        """``"t1", "t2", ...`` of the items, in order (0 = padding is skipped)."""
        out: list[int] = []
        for item in items:
            if item > 0:
                if out:
                    out.extend(self.separator)
                out.extend(self.quoted[item])
        return out

    def fit_history(self, head: list[int], history: Sequence[int], tail: list[int]) -> list[int]:
        """``head + titles(history) + tail``, dropping the oldest history items until it fits."""
        items = [i for i in history if i > 0]
        budget = self.max_prompt_tokens - len(head) - len(tail)
        lengths = [len(self.quoted[i]) + len(self.separator) for i in items]
        total = sum(lengths)
        start = 0
        while start < len(items) and total - len(self.separator) > budget:
            total -= lengths[start]
            start += 1
        return head + self.title_list(items[start:]) + tail


@dataclass
class PromptBatch:
    """Left-padded token tensors: every row ends at the last column."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor | None = None  # -100 except on response tokens


def pack_left(prompts: Sequence[list[int]], responses: Sequence[list[int]] | None, pad_id: int) -> PromptBatch:
    """Concatenate prompt + response per row and left-pad; labels mark the response tokens (aligned with
    ``input_ids``: position t's label is input_ids[t], a model shifts by one)."""
    rows = [p + r for p, r in zip(prompts, responses)] if responses is not None else list(prompts)
    width = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long) if responses is not None else None
    for b, row in enumerate(rows):
        if row:
            ids[b, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[b, width - len(row) :] = 1
        if labels is not None and responses[b]:
            labels[b, width - len(responses[b]) :] = torch.tensor(responses[b], dtype=torch.long)
    return PromptBatch(ids, mask, labels)
