"""The item-title trie shared by training (MSL's valid next tokens) and inference (beam search constrained to
real titles, ended by EOS, mapped back to exactly one item).

Every item's response is the tokenisation of ``'"' + title + '"'`` followed by EOS, built on
:class:`zoo.modules.trie.ItemTrie`. Titles are HTML-unescaped and whitespace-normalised; an item without a title
(empty, or the ``title_<id>`` placeholder of the Amazon files) is called ``item <id>``.

**Duplicates.** Two items must never share a token sequence, or a decoded title could not name one item. Titles
are compared *after* tokenisation (an uncased tokenizer merges "Fearless" and "FEARLESS"; unknown characters
become the same ``[UNK]``): in item-id order the first item keeps its title, every later item with the same
tokens gets `` (item <id>)`` appended (``<id>`` = the internal item id), so the result is deterministic.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence

import torch

from zoo.errors import DataError
from zoo.modules.trie import ItemTrie, candidate_trie

_PLACEHOLDER = re.compile(r"^title_\d+$")


def clean_title(text: str, item: int) -> str:
    """Unescape HTML entities, collapse whitespace; a missing title becomes ``item <id>``."""
    title = " ".join(html.unescape(text or "").split())
    return title if title and not _PLACEHOLDER.match(title) else f"item {item}"


class TitleTrie:
    """Tokenised, de-duplicated titles of items 1..N and the prefix trie over ``"title"`` + EOS.

    ``titles[i]`` is the (unique) text of item i, ``quoted[i]`` its tokens without EOS (what a prompt shows),
    ``sequences[i]`` the full response (``quoted[i]`` + EOS); index 0 is the padding item.
    """

    def __init__(self, raw_titles: Sequence[str], tokenizer, eos_token_id: int) -> None:
        self.eos_token_id = int(eos_token_id)
        self.vocab_size = len(tokenizer)
        titles = [""] + [clean_title(t, i) for i, t in enumerate(raw_titles) if i > 0]
        quoted = [[]] + _encode(tokenizer, [f'"{t}"' for t in titles[1:]])
        owner: dict[tuple[int, ...], int] = {}
        renamed = []
        for item in range(1, len(titles)):
            if tuple(quoted[item]) in owner:
                renamed.append(item)
            else:
                owner[tuple(quoted[item])] = item
        for item in renamed:
            titles[item] = f"{titles[item]} (item {item})"
        if renamed:
            for item, tokens in zip(renamed, _encode(tokenizer, [f'"{titles[i]}"' for i in renamed])):
                if tuple(tokens) in owner:
                    raise DataError(f"title of item {item} still collides after appending its id: {titles[item]!r}")
                owner[tuple(tokens)] = item
                quoted[item] = tokens
        self.titles = titles
        self.num_renamed = len(renamed)
        self.quoted = quoted
        self.sequences = [[]] + [q + [self.eos_token_id] for q in quoted[1:]]
        self.trie = ItemTrie(self.sequences[1:], vocab_size=self.vocab_size)

    @property
    def num_items(self) -> int:
        return len(self.titles) - 1

    def to(self, device) -> TitleTrie:
        self.trie.to(device)
        return self

    def response(self, item: int) -> list[int]:
        """Token ids an LLM must generate for ``item`` (quoted title + EOS)."""
        return self.sequences[item]

    def candidate_trie(self, candidates: torch.Tensor) -> tuple[ItemTrie, torch.Tensor]:
        """The trie of :func:`zoo.modules.trie.candidate_trie` over the titles, and each row's start node."""
        trie = candidate_trie(self.sequences, candidates, self.vocab_size)
        starts = trie.step(
            torch.zeros(len(candidates), dtype=torch.long), self.vocab_size + torch.arange(len(candidates))
        )
        return trie, starts


def _encode(tokenizer, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
