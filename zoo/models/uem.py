"""UEM (Doddapaneni et al., "User Embedding Model for Personalized Language Prompting", PERSONALIZE 2024): a user's
long history, each item's free text embedded once by a frozen sentence encoder, compressed by a co-trained user
embedding module (``zoo.modules.user_embedding``) into soft prompts that an LM reads in place of the history text.

* **Item vectors** come from the ``item_embeddings`` stage (``model.text_encoder``, default all-MiniLM-L6-v2 offline,
  over ``model.text_fields``: title and whichever of genres / categories / brand / attributes the dataset has),
  cached once per corpus. No training or evaluation step ever calls the sentence encoder: the vectors are a buffer.
  The user's rating of each history item (where the corpus has ratings) enters as a learned embedding.
* **Soft prompts** go through the shared injection path: the prompt holds :data:`zoo.modules.llm.INJECT` positions
  (K of them, or one per history item with ``model.tokens=per_item``) that ``CausalLMBackbone.embed`` fills with
  the module's output. Module and LM are trained together: every LM weight for ``tiny-llama``, LoRA adapters
  (``model.lora_r``) for a pretrained backbone; the module is always trained in full.

Three additions of the zoo's to task 1, off by default in the model (``benchmarks/uem_alignment.py`` measures them;
the shipped ``uem_<dataset>`` recipes turn on the ones that beat most-popular there, and :data:`PAPER_MODULE`
turns them off again): the
title-alignment term ``model.align_weight`` (:meth:`UEM.alignment_loss`), the user slot ``model.user_slot`` (the
mean soft prompt as the last prompt position) and the user bias ``model.user_bias`` (:meth:`UEM.logit_bias`). The
term's items are their title tokens, or with ``model.align_items=text`` a learned map of their sentence vectors;
``model.align_popularity`` adds a learned weight times each item's log training-part count to its logits. On a
tiny from-scratch LM the term ends the collapse of the soft prompts to one prompt for everyone, which the LM's loss
alone leads to. The term is also an item scorer of the model's own: ``eval.prior_weight`` adds its log-probability
of each item to the beam scores (:meth:`UEM.item_prior`, a product of experts). Task 2's counterpart is a genre
head on the mean soft prompt (``model.align_weight`` there: a multi-label BCE), whose log-odds
``eval.prior_weight`` adds to the genre answer's score (:meth:`UEMGenres._prior_values`).

Two tasks:

* ``uem`` (task 1, ``generative``): the next item's title after the soft prompts, decoded by beam search constrained
  to real titles under the shared protocol: ``llmrec`` with the history text replaced by soft prompts (it
  subclasses it; decoding, losses and the prompt frame are llmrec's).
* ``uem_genres`` (task 2, ``multilabel``): the paper's personalisation task, a user's preferred genres from the
  rating history, as text (``"Drama, Comedy"``), greedy decoding constrained to genre names; multi-label F1
  (``zoo.metrics.multilabel``). ``model.history=text`` is the text-prompt baseline: the same LM and prompt with
  the history written out (title, genres, rating), as many of the most recent items as ``model.max_prompt_tokens``
  allows. The label is defined on the training part only (see :func:`genre_examples`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from zoo.data.corpus import Corpus
from zoo.data.datamodule import DataSpec, ShardedDataModule
from zoo.errors import ConfigError, DataError
from zoo.models.llm_rec import LLMRec, LLMRecConfig, encode_prompts, pack_prompts
from zoo.modules.llm import INJECT
from zoo.modules.text_encoder import DEFAULT_ENCODER
from zoo.modules.user_embedding import UserEmbeddingConfig, UserEmbeddingModule, rating_levels
from zoo.registry import MODELS

HISTORY_MODES = ("soft", "text")
ALIGN_ITEMS = ("titles", "text")  # model.align_items
# Overrides that take a uem_<dataset> recipe back to the paper's module: K resampling queries, none of the zoo's
# additions (alignment term, its popularity feature and text items, the prior at decoding). Ablations and the cost
# benchmark start from here, whatever the recipes ship.
PAPER_MODULE = (
    "model.tokens=queries",
    "model.align_weight=0",
    "model.align_items=titles",
    "model.align_popularity=false",
    "eval.prior_weight=0",
)
NO_GENRE = {"unknown", "(no genres listed)"}
GENRE_INSTRUCTION = (
    "Given the movies the user has watched and how they rated them, list the genres the user prefers, the most "
    "preferred first."
)
GENRE_PREFIX = "The user has watched and rated: "


@dataclass
class UEMConfig(LLMRecConfig, UserEmbeddingConfig):
    name: str = "uem"
    text_encoder: str = DEFAULT_ENCODER  # the frozen sentence encoder of the item_embeddings stage
    text_fields: list[str] = field(default_factory=lambda: ["title", "genres", "categories", "brand", "attributes"])
    encode_batch_size: int = 256
    # the zoo's addition (not in the paper): weight of the title-alignment loss of task 1 (``UEM.alignment_loss``);
    # 0 trains on the LM's loss alone
    align_weight: float = 0.0
    # the zoo's addition: one more INJECT position at the very end of the prompt, right before the response, that
    # holds the user's mean soft prompt, so the first title token is predicted from it without attention
    user_slot: bool = False
    # the zoo's addition: a per-user bias on every title token's logits, scale * (mean soft prompt . token
    # embedding), the scale learned from 0 (the LM's own logits at the start)
    user_bias: bool = False
    # the zoo's addition: the alignment term's logits gain a learned weight (from 0) times each item's log
    # training-part count, log(1 + count), so the model's own item scorer (and ``eval.prior_weight``) can weigh
    # popularity against the user's history; needs align_weight > 0
    align_popularity: bool = False
    # the zoo's addition: the alignment term's item side. titles: each item's mean title-token embedding in the LM's
    # own embedding space (the prompts then point at title tokens the LM reads) | text: a learned linear map of the
    # item's cached sentence-encoder vector (title, genres, categories, brand: the module's own input) into it
    align_items: str = "titles"


class RatingLookup:
    """(user, item) -> the user's rating level of the item (``rating_levels``; 0 = none), the rating of the
    user's first interaction with it, which precedes every history that holds the item (no later rating leaks).
    A plain numpy object, cheap to pickle into DataLoader workers."""

    def __init__(self, corpus: Corpus) -> None:
        self.stride = corpus.num_items + 1
        users = np.repeat(np.arange(corpus.num_users, dtype=np.int64), corpus.lengths())
        keys = users * self.stride + corpus.items
        order = np.argsort(keys, kind="stable")
        ordered = keys[order]
        first = np.ones(len(ordered), dtype=bool)
        first[1:] = ordered[1:] != ordered[:-1]
        self.keys = ordered[first]
        levels = rating_levels(torch.from_numpy(np.asarray(corpus.ratings, dtype=np.float32)[order][first]))
        self.levels = levels.numpy()

    def __call__(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        u, h = users.numpy()[:, None], history.numpy()
        keys = u * self.stride + h
        at = np.searchsorted(self.keys, keys).clip(max=max(len(self.keys) - 1, 0))
        found = (self.keys[at] == keys) & (h > 0) & (u >= 0)
        return torch.from_numpy(np.where(found, self.levels[at], 0).astype(np.int64))


class SoftHistory:
    """What both UEM tasks share: the cached item vectors (a non-persistent buffer: rebuilt from the stage, never
    checkpointed), the user embedding module, and the soft prompts of a batch."""

    def _build_user_module(self, cfg, datamodule) -> None:
        from zoo.stages import load_embeddings

        if "item_embeddings" not in self.artifacts:
            raise ConfigError(f"model '{cfg.model.name}' needs the item_embeddings stage artifact")
        vectors = torch.from_numpy(load_embeddings(self.artifacts["item_embeddings"]))
        if len(vectors) != self.num_items:
            raise DataError(f"item_embeddings has {len(vectors)} rows for {self.num_items} items")
        table = torch.cat([torch.zeros(1, vectors.shape[1]), vectors.float()])
        self.register_buffer("item_vectors", table, persistent=False)
        corpus = datamodule.corpus
        with_ratings = bool(cfg.model.use_ratings) and corpus.ratings is not None
        self.ratings = RatingLookup(corpus) if with_ratings else None
        embeddings = self.backbone.model.get_input_embeddings().weight.detach()
        rms = float(embeddings.float().pow(2).mean().sqrt())
        self.user_module = UserEmbeddingModule(
            cfg.model, table.shape[1], embeddings.shape[1], int(cfg.data.max_len), with_ratings, embedding_rms=rms
        )

    def user_tokens(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The module's soft prompts of every row and their mask ([B, S, d_lm], [B, S])."""
        history = batch["history"]
        return self.user_module(self.item_vectors[history], history > 0, batch.get("history_ratings"))

    def soft_prompts(self, batch: dict) -> torch.Tensor | None:
        """The user tokens of every row, flattened in row-major order ([P, d_lm]) for the INJECT positions."""
        tokens, mask = self.user_tokens(batch)
        return tokens[mask]

    def user_vectors(self, batch: dict, prompts: torch.Tensor) -> torch.Tensor:
        """Each row's mean soft prompt ([B, d_lm]) from the flattened ``soft_prompts`` of ``batch`` (the user
        slot, itself that mean, leaves it unchanged)."""
        rows = len(batch["history"])
        if self.cfg.model.tokens == "queries":
            user = prompts.reshape(rows, -1, prompts.shape[-1]).mean(1)
        else:
            counts = (batch["history"] > 0).sum(1) + int(bool(self.cfg.model.user_slot))
            user = torch.zeros(rows, prompts.shape[-1], dtype=prompts.dtype, device=prompts.device)
            row = torch.repeat_interleave(torch.arange(rows, device=prompts.device), counts)
            user = user.index_add(0, row, prompts) / counts.clamp(min=1)[:, None].to(prompts.dtype)
        return user


class SoftPromptEncoder:
    """Batch transform of ``uem``: the prompt frame and instruction of llmrec with the history text replaced by
    ``INJECT`` positions (one per soft prompt), the target title as response (``encode_prompts``), and the
    history's rating levels (``history_ratings``) when the module reads them."""

    def __init__(self, head: list[int], tail: list[int], titles, pad_id: int, counts, ratings, slot=False) -> None:
        self.head, self.tail, self.titles, self.pad_id = head, tail, titles, pad_id
        self.slot = [INJECT] if slot else []  # model.user_slot: the mean soft prompt, last before the response
        self.counts = counts  # history [B, L] -> soft prompts per row
        self.ratings = ratings

    def __call__(self, batch: dict) -> dict:
        prompts = [self.head + [INJECT] * n + self.tail + self.slot for n in self.counts(batch["history"])]
        if self.ratings is not None:
            batch["history_ratings"] = self.ratings(batch["user"], batch["history"])
        return encode_prompts(batch, prompts, self.titles, self.pad_id)


class _Counts:
    """Picklable soft-prompt counter (K per row, or the row's items)."""

    def __init__(self, tokens: str, k: int) -> None:
        self.tokens, self.k = tokens, k

    def __call__(self, history: torch.Tensor) -> list[int]:
        if self.tokens == "queries":
            return [self.k] * len(history)
        return (history > 0).sum(1).tolist()


@MODELS.register("uem")
class UEM(SoftHistory, LLMRec):
    """Task 1: next-item title generation after K soft prompts (see the module docstring)."""

    Config = UEMConfig
    stages = ("item_embeddings",)
    test_overrides = (
        "model.text_fields=[title]",
        "model.module_dim=32",
        "model.module_layers=1",
        "model.num_tokens=4",
        "model.tiny_hidden=32",
    )

    @classmethod
    def check_config(cls, cfg) -> None:
        super().check_config(cfg)
        weight = float(cfg.model.align_weight)
        if weight < 0:
            raise ConfigError(f"model.align_weight must be >= 0, got {cfg.model.align_weight}")
        if cfg.model.align_items not in ALIGN_ITEMS:
            raise ConfigError(
                f"model.align_items must be one of {', '.join(ALIGN_ITEMS)}, got '{cfg.model.align_items}'"
            )
        if cfg.model.align_items == "text" and not weight:
            raise ConfigError(
                "model.align_items=text is the alignment term's item side: it needs model.align_weight > 0"
            )
        if cfg.model.align_popularity and not weight:
            raise ConfigError("model.align_popularity adds to the alignment term: it needs model.align_weight > 0")

    def __init__(self, cfg, datamodule, artifacts: dict | None = None) -> None:
        super().__init__(cfg, datamodule, artifacts)
        self._build_user_module(cfg, datamodule)
        if float(cfg.model.align_weight) > 0:  # without the term the model has no extra weights or buffers
            self.align_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # CLIP's learned logit scale
            if cfg.model.align_items == "titles":
                self._build_title_bags()
            else:  # text: a learned map of the cached sentence vectors into the LM's space
                lm_dim = self.backbone.model.get_input_embeddings().weight.shape[1]
                self.align_item_proj = nn.Linear(self.item_vectors.shape[1], lm_dim, bias=False)
        if cfg.model.user_bias:
            self.bias_scale = nn.Parameter(torch.zeros(()))
        if cfg.model.align_popularity:
            # filled by prepare() from the training part (rebuilt from the data, never checkpointed)
            self.register_buffer("item_log_count", torch.zeros(self.num_items), persistent=False)
            self.popularity_scale = nn.Parameter(torch.zeros(()))

    def prepare(self, datamodule) -> None:
        super().prepare(datamodule)
        if self.cfg.model.align_popularity:
            # the histories before the validation targets (s[:n-2]): no validation or test target is counted
            counts = torch.from_numpy(datamodule.train_item_counts("val")[1:]).float()
            self.item_log_count.copy_(torch.log1p(counts))

    def _build_title_bags(self) -> None:
        # every real item's title as a bag of its quoted title tokens, each weighted 1/length: [N, V] (sparse)
        quoted = self.titles.quoted[1:]
        lengths = torch.tensor([len(q) for q in quoted], dtype=torch.float32)
        rows = torch.repeat_interleave(torch.arange(len(quoted)), lengths.long())
        cols = torch.tensor([t for q in quoted for t in q], dtype=torch.long)
        vocab = self.backbone.model.get_input_embeddings().weight.shape[0]
        bags = torch.sparse_coo_tensor(torch.stack([rows, cols]), 1 / lengths[rows], (len(quoted), vocab)).coalesce()
        # dense buffers (DDP broadcasts buffers; a sparse one would not travel): the bag is rebuilt per call
        self.register_buffer("title_bag_index", bags.indices(), persistent=False)
        self.register_buffer("title_bag_weight", bags.values(), persistent=False)
        self.title_bag_shape = tuple(bags.shape)

    def title_vectors(self) -> torch.Tensor:
        """Every real item's title as the mean of the LM's token embeddings of its (quoted) title tokens,
        centred over the catalogue: [N, d_lm] (item i at row i - 1)."""
        table = self.backbone.model.get_input_embeddings().weight
        bags = torch.sparse_coo_tensor(
            self.title_bag_index, self.title_bag_weight, self.title_bag_shape, is_coalesced=True
        )
        # a sparse product: no [N, T, d] gather of every title's token embeddings
        mean = torch.sparse.mm(bags, table.float()).to(table.dtype)
        return mean - mean.mean(0, keepdim=True)

    def user_tokens(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The module's soft prompts, and with ``model.user_slot`` their mean appended as each row's last one."""
        tokens, mask = super().user_tokens(batch)
        if not self.cfg.model.user_slot:
            return tokens, mask
        weights = mask.to(tokens.dtype)[..., None]
        mean = (tokens * weights).sum(1, keepdim=True) / weights.sum(1, keepdim=True).clamp(min=1)
        return torch.cat([tokens, mean], 1), torch.cat([mask, torch.ones_like(mask[:, :1])], 1)

    def alignment_logits(self, batch: dict, prompts: torch.Tensor) -> torch.Tensor:
        """The alignment term's logits over the catalogue ([B, N], item i at column i - 1): the scaled cosine
        between each row's mean soft prompt and every item's mean title-token embedding (``model.align_items=text``:
        the learned map of its sentence-encoder vector), plus with
        ``model.align_popularity`` a learned weight times each item's log training-part count."""
        user = self.user_vectors(batch, prompts)
        if self.cfg.model.align_items == "text":
            items = self.align_item_proj(self.item_vectors[1:].to(self.align_item_proj.weight.dtype)).to(user.dtype)
        else:
            items = self.title_vectors().to(user.dtype)
        logits = nn.functional.normalize(user, dim=-1) @ nn.functional.normalize(items, dim=-1).T
        logits = logits * self.align_scale.clamp(max=math.log(100)).exp()
        if self.cfg.model.align_popularity:
            logits = logits + self.popularity_scale * self.item_log_count.to(logits.dtype)
        return logits

    @classmethod
    def has_item_prior(cls, cfg) -> bool:
        return float(cfg.model.align_weight) > 0  # the alignment term is the model's own item scorer

    def item_prior(self, batch: dict, prompts: torch.Tensor) -> torch.Tensor:
        """``eval.prior_weight`` times the alignment term's log-probability of every item ([B, N+1], column 0
        -inf): what beam search adds to each title's score, a product of the LM and the module's own ranking."""
        logp = torch.log_softmax(self.alignment_logits(batch, prompts).float(), dim=-1)
        pad = logp.new_full((len(logp), 1), float("-inf"))
        return float(self.cfg.eval.prior_weight) * torch.cat([pad, logp], 1)

    def alignment_loss(self, batch: dict, prompts: torch.Tensor) -> torch.Tensor:
        """The zoo's title-alignment term (``model.align_weight``): a softmax over the whole catalogue of the
        cosine between a row's mean soft prompt and each item's mean title-token embedding (in the LM's own
        embedding space), the target item the label. Without it the module collapses on a from-scratch LM: the
        LM first learns the titles' marginal, treats the user tokens as noise, and the module learns to emit
        one near-constant prompt (``benchmarks/uem_probe.py``); this term makes every user's prompt point at
        the title tokens of the items it predicts, which a tied-embedding LM reads like text."""
        return nn.functional.cross_entropy(self.alignment_logits(batch, prompts).float(), batch["target"] - 1)

    def logit_bias(self, batch: dict, prompts: torch.Tensor) -> torch.Tensor | None:
        """``model.user_bias``: each row's bias on the next-token logits ([B, V]), ``bias_scale`` times the dot
        product of its mean soft prompt with every token embedding (the tied read-out's direction); else None."""
        if not self.cfg.model.user_bias:
            return None
        table = self.backbone.model.get_input_embeddings().weight
        return self.bias_scale * (self.user_vectors(batch, prompts).to(table.dtype) @ table.T)

    def decoding_inputs(self, batch: dict) -> dict:
        prompts = self.soft_prompts(batch)
        prior = self.item_prior(batch, prompts) if float(self.cfg.eval.prior_weight) else None
        return {"vectors": prompts, "logit_bias": self.logit_bias(batch, prompts), "item_prior": prior}

    def token_logits(self, batch: dict, predicts: torch.Tensor, prompts: torch.Tensor | None) -> torch.Tensor:
        logits = super().token_logits(batch, predicts, prompts)
        bias = self.logit_bias(batch, prompts)
        if bias is None:
            return logits
        rows = predicts.nonzero()[:, 0]  # the row of every predicted position, in the flattened order
        return logits + bias[rows].to(logits.dtype)

    def compute_loss(self, batch: dict) -> torch.Tensor:
        weight = float(self.cfg.model.align_weight)
        prompts = self.soft_prompts(batch)  # one module pass: the LM's loss, its bias and the term read them
        lm = self.token_loss(batch, prompts)
        if not weight:
            return lm
        align = self.alignment_loss(batch, prompts)
        if self._trainer is not None:
            self.log("train/align_loss", align, batch_size=len(batch["target"]))
        return lm + weight * align

    def data_spec(self) -> DataSpec:
        instruction, prefix = self._instruction()
        head = self.prompts.text(self.frame.head(instruction, prefix))
        tail = self.prompts.text(self.frame.closing)
        m = self.cfg.model
        encoder = SoftPromptEncoder(
            head,
            tail,
            self.titles,
            self.backbone.pad_token_id,
            _Counts(m.tokens, int(m.num_tokens)),
            self.ratings,
            slot=bool(m.user_slot),
        )
        return DataSpec(train_mode="prefix", transform=encoder)


# -- task 2: preferred genres -------------------------------------------------------------------------------------
@dataclass
class UEMGenresConfig(UEMConfig):
    name: str = "uem_genres"
    history: str = "soft"  # soft: UEM's soft prompts | text: the history written in the prompt (the baseline)
    max_prompt_tokens: int = 1024  # the text baseline's context: the most recent items that fit
    label_window: int = 10  # the last items of the training part s[:n-2] whose genres define the label
    label_share: float = 0.5  # a genre is preferred when it is in at least this share of the window's top-rated items
    min_history: int = 5  # users need this many items before the label window
    val_users: float = 0.1  # shares of users held out (seeded by split_seed) for validation and test
    test_users: float = 0.1
    split_seed: int = 0
    max_genres: int = 6  # the most genres one answer may list
    instruction: Optional[str] = None  # default: GENRE_INSTRUCTION
    history_prefix: Optional[str] = None  # default: GENRE_PREFIX


def genre_vocabulary(corpus: Corpus) -> list[str]:
    """The genres of ``item_text["genres"]`` (space-separated names), most frequent first (ties by name);
    placeholders such as ``unknown`` are left out."""
    if "genres" not in corpus.item_text:
        raise DataError(f"{corpus.name}: uem_genres needs item genres (item_text['genres']); MovieLens has them")
    counts: dict[str, int] = {}
    for text in corpus.item_text["genres"][1:]:
        for name in text.split():
            if name not in NO_GENRE:
                counts[name] = counts.get(name, 0) + 1
    if not counts:
        raise DataError(f"{corpus.name}: no item has a genre")
    return sorted(counts, key=lambda g: (-counts[g], g))


def item_genres(corpus: Corpus, names: list[str]) -> np.ndarray:
    """[N+1, G] bool: which genres each item has (row 0 = padding)."""
    index = {g: i for i, g in enumerate(names)}
    table = np.zeros((corpus.num_items + 1, len(names)), dtype=bool)
    for item, text in enumerate(corpus.item_text["genres"]):
        for name in text.split():
            if name in index:
                table[item, index[name]] = True
    return table


@dataclass
class GenreExamples:
    user: np.ndarray  # [E] user index
    start: np.ndarray  # [E] input history = corpus.items[start:end] (the datamodule keeps the last data.max_len)
    end: np.ndarray  # [E] = the first position of the label window
    labels: np.ndarray  # [E, G] bool

    def subset(self, rows: np.ndarray) -> GenreExamples:
        return GenreExamples(self.user[rows], self.start[rows], self.end[rows], self.labels[rows])

    def __len__(self) -> int:
        return len(self.user)


def genre_examples(corpus: Corpus, names: list[str], window: int, share: float, min_history: int) -> GenreExamples:
    """One example per user, built from the training part of the leave-one-out split only.

    For a user with sequence s of length n the ranking protocol reserves s[n-2] (validation) and s[n-1] (test); the
    training part is T = s[:n-2]. The **label window** is the last ``window`` items of T, the **input** every item
    of T before it (users with fewer than ``min_history`` of them are left out). The window's **top-rated items**
    are those with the window's highest rating (every window item when the corpus has no ratings); the user's
    **preferred genres** are the genres held by at least ``share`` of them (at least one item), and when none
    reaches that share, the most frequent ones (ties kept). s[n-2] and s[n-1] are never read."""
    if window < 1 or min_history < 1 or not 0.0 < share <= 1.0:
        raise ConfigError(
            f"model.label_window={window} and model.min_history={min_history} must be >= 1, "
            f"model.label_share={share} in (0, 1]"
        )
    genres = item_genres(corpus, names)
    users, starts, ends, labels = [], [], [], []
    for u in range(corpus.num_users):
        begin, train_end = int(corpus.offsets[u]), int(corpus.offsets[u + 1]) - 2  # T = items[begin:train_end]
        cut = train_end - window
        if cut - begin < min_history:
            continue
        window_items = corpus.items[cut:train_end]
        if corpus.ratings is not None:
            rated = corpus.ratings[cut:train_end]
            window_items = window_items[rated == rated.max()]
        counts = genres[window_items].sum(0)
        if counts.max() == 0:
            continue
        label = counts >= max(1, math.ceil(share * len(window_items) - 1e-9))
        if not label.any():
            label = counts == counts.max()
        users.append(u)
        starts.append(begin)
        ends.append(cut)
        labels.append(label)
    if not users:
        raise DataError(
            f"{corpus.name}: no user has {min_history} + {window} items before the last two (model.min_history, "
            "model.label_window)"
        )
    return GenreExamples(
        np.asarray(users, dtype=np.int64),
        np.asarray(starts, dtype=np.int64),
        np.asarray(ends, dtype=np.int64),
        np.stack(labels),
    )


class GenreDataset(Dataset):
    """Whole batches from index lists: ``user``, ``history`` (the last ``max_len`` input items, left-padded),
    ``labels_multi`` [B, G] float, then the model's transform."""

    def __init__(self, corpus: Corpus, examples: GenreExamples, max_len: int, transform=None) -> None:
        self.items = corpus.items
        self.ex, self.max_len, self.transform = examples, max_len, transform

    def __len__(self) -> int:
        return len(self.ex)

    def __getitem__(self, index: list[int]) -> dict:
        idx = np.asarray(index, dtype=np.int64)
        start, end = self.ex.start[idx], self.ex.end[idx]
        cols = end[:, None] - self.max_len + np.arange(self.max_len)[None, :]
        history = np.where(cols >= start[:, None], self.items[np.clip(cols, 0, None)], 0)
        batch = {
            "history": torch.from_numpy(history),
            "user": torch.from_numpy(self.ex.user[idx]),
            "labels_multi": torch.from_numpy(self.ex.labels[idx].astype(np.float32)),
        }
        return self.transform(batch) if self.transform is not None else batch


class GenreDataModule(ShardedDataModule):
    """The ``multilabel`` family's DataModule: :func:`genre_examples`, users split into train / val / test groups
    (seeded permutation: ``model.test_users``, then ``model.val_users`` shares; the rest trains)."""

    def __init__(self, cfg, model_cfg, seed: int = 42, corpus: Corpus | None = None) -> None:
        super().__init__(cfg, seed, corpus)
        self.spec = DataSpec()
        self.genre_names = genre_vocabulary(self.corpus)
        m = model_cfg
        self.all_examples = genre_examples(
            self.corpus, self.genre_names, int(m.label_window), float(m.label_share), int(m.min_history)
        )
        n = len(self.all_examples)
        n_test, n_val = round(float(m.test_users) * n), round(float(m.val_users) * n)
        if n_test < 1 or n_val < 1 or n - n_test - n_val < 1:
            raise DataError(
                f"{self.corpus.name}: {n} users with a genre label cannot be split into train / val / test "
                f"(model.val_users={m.val_users}, model.test_users={m.test_users})"
            )
        order = np.random.default_rng(int(m.split_seed)).permutation(n)
        self.split_rows = {
            "test": np.sort(order[:n_test]),
            "val": np.sort(order[n_test : n_test + n_val]),
            "train": np.sort(order[n_test + n_val :]),
        }

    @property
    def max_len(self) -> int:
        return int(self.cfg.max_len)

    def examples(self, split: str) -> GenreExamples:
        if split not in self.split_rows:
            raise DataError(f"unknown split '{split}'")
        return self.all_examples.subset(self.split_rows[split])

    def train_item_counts(self, split: str = "val") -> np.ndarray:
        ex = self.examples("train")
        rows = np.concatenate([np.arange(s, e) for s, e in zip(ex.start, ex.end)])
        return np.bincount(self.corpus.items[rows], minlength=self.num_items + 1)

    def batch_dataset(self, split: str, train: bool) -> Dataset:
        return GenreDataset(self.corpus, self.examples(split), self.max_len, self.spec.transform)


class GenrePromptEncoder:
    """Batch transform of ``uem_genres``: prompt = head + history (soft: ``INJECT`` positions; text: the most recent
    items that fit ``max_prompt_tokens``, each as its title, genres and rating) + closing; response = the label's
    genre names in vocabulary order, comma-separated, + EOS (the token sequences the constrained decoder emits)."""

    def __init__(self, head, tail, pad_id, genre_tokens, sep, eos, counts=None, ratings=None, text=None) -> None:
        self.head, self.tail, self.pad_id = head, tail, pad_id
        self.genre_tokens, self.sep, self.eos = genre_tokens, sep, eos
        self.counts, self.ratings, self.text = counts, ratings, text  # text: (item tokens, rating tokens, sep, budget)

    def response(self, label: list[float]) -> list[int]:
        out: list[int] = []
        for g, on in enumerate(label):
            if on:
                out += (self.sep if out else []) + self.genre_tokens[g]
        return out + [self.eos]

    def text_history(self, history: list[int], levels: list[int]) -> list[int]:
        items, rating_tokens, sep, budget = self.text
        pieces: list[list[int]] = []
        used = 0
        for item, level in zip(reversed(history), reversed(levels)):
            if item <= 0:
                break
            piece = items[item] + rating_tokens[level]
            if used + len(piece) + (len(sep) if pieces else 0) > budget:
                break
            used += len(piece) + (len(sep) if pieces else 0)
            pieces.append(piece)
        out: list[int] = []
        for piece in reversed(pieces):
            out += (sep if out else []) + piece
        return out

    def __call__(self, batch: dict) -> dict:
        history = batch["history"]
        levels = self.ratings(batch["user"], history) if self.ratings is not None else torch.zeros_like(history)
        if self.counts is not None:
            middles = [[INJECT] * n for n in self.counts(history)]
            if self.ratings is not None:
                batch["history_ratings"] = levels
        else:
            middles = [self.text_history(h, r) for h, r in zip(history.tolist(), levels.tolist())]
        prompts = [self.head + mid + self.tail for mid in middles]
        responses = [self.response(row) for row in batch["labels_multi"].tolist()]
        return pack_prompts(batch, prompts, responses, self.pad_id)


@MODELS.register("uem_genres")
class UEMGenres(SoftHistory, LLMRec):
    """Task 2: a user's preferred genres as text after the soft prompts (``model.history=soft``) or after the
    history written out (``model.history=text``, the text-prompt baseline); see the module docstring."""

    Config = UEMGenresConfig
    task = "multilabel"
    prior_offsets = True  # the genre head's prior is per-genre log-odds
    test_overrides = (
        "model.text_fields=[title]",
        "model.module_dim=32",
        "model.module_layers=1",
        "model.num_tokens=4",
        "model.tiny_hidden=32",
        "model.label_window=2",
        "model.min_history=1",
        "model.max_prompt_tokens=128",
    )

    @classmethod
    def stages_for(cls, cfg) -> tuple[str, ...]:
        return ("item_embeddings",) if cfg.model.history == "soft" else ()

    @classmethod
    def check_config(cls, cfg) -> None:
        if cfg.model.history not in HISTORY_MODES:
            raise ConfigError(f"unknown model.history '{cfg.model.history}' ({' | '.join(HISTORY_MODES)})")
        if cfg.loss.name != "lml":
            raise ConfigError(
                f"uem_genres trains with loss.name=lml (its answers are genre lists, not titles), got {cfg.loss.name}"
            )
        if (
            cfg.model.user_slot
            or cfg.model.user_bias
            or cfg.model.align_popularity
            or cfg.model.align_items != "titles"
        ):
            raise ConfigError(
                "model.user_slot, model.user_bias, model.align_popularity and model.align_items are task 1's (uem): "
                "uem_genres has no titles"
            )
        if float(cfg.model.align_weight) < 0:
            raise ConfigError(f"model.align_weight must be >= 0, got {cfg.model.align_weight}")
        if float(cfg.model.align_weight) and cfg.model.history != "soft":
            raise ConfigError("model.align_weight trains the user module's genre head: model.history=text has none")

    @classmethod
    def has_item_prior(cls, cfg) -> bool:
        return cfg.model.history == "soft" and float(cfg.model.align_weight) > 0  # the genre head

    def __init__(self, cfg, datamodule, artifacts: dict | None = None) -> None:
        m = cfg.model
        if not hasattr(datamodule, "genre_names"):
            raise ConfigError("uem_genres needs the multilabel family's GenreDataModule")
        self.num_labels = len(datamodule.genre_names)
        self.genre_names = list(datamodule.genre_names)
        super().__init__(cfg, datamodule, artifacts)
        tok = self.backbone.tokenizer
        self.genre_tokens = [list(tok(" " + g, add_special_tokens=False)["input_ids"]) for g in self.genre_names]
        self.sep = list(tok(",", add_special_tokens=False)["input_ids"])
        self._item_genres = [
            " ".join(g for g in text.split() if g not in NO_GENRE) for text in datamodule.corpus.item_text["genres"]
        ]
        if len(self.sep) != 1:
            raise ConfigError(f"the tokenizer splits ',' into {len(self.sep)} tokens; uem_genres needs one")
        if m.history == "soft":
            self._build_user_module(cfg, datamodule)
            if float(m.align_weight) > 0:  # the module's own genre head (the zoo's addition, as task 1's term)
                width = self.backbone.model.get_input_embeddings().weight.shape[1]
                self.genre_head = nn.Linear(width, self.num_labels)
        else:
            corpus = datamodule.corpus
            self.ratings = RatingLookup(corpus) if corpus.ratings is not None else None

    def _instruction(self) -> tuple[str, str]:
        m = self.cfg.model
        return m.instruction or GENRE_INSTRUCTION, m.history_prefix if m.history_prefix is not None else GENRE_PREFIX

    def data_spec(self) -> DataSpec:
        m = self.cfg.model
        instruction, prefix = self._instruction()
        head = self.prompts.text(self.frame.head(instruction, prefix))
        tail = self.prompts.text(self.frame.closing)
        common = dict(
            head=head,
            tail=tail,
            pad_id=self.backbone.pad_token_id,
            genre_tokens=self.genre_tokens,
            sep=self.sep,
            eos=self.backbone.eos_token_id,
            ratings=self.ratings,
        )
        if m.history == "soft":
            return DataSpec(transform=GenrePromptEncoder(counts=_Counts(m.tokens, int(m.num_tokens)), **common))
        genres = self._item_genres
        items = [[]] + [
            self.titles.quoted[i] + self.prompts.text(f" ({genres[i]})" if genres[i] else "")
            for i in range(1, self.num_items + 1)
        ]
        rating_tokens = [[]] + [self.prompts.text(f", rated {level}") for level in range(1, 11)]
        budget = int(m.max_prompt_tokens) - len(head) - len(tail)
        return DataSpec(
            transform=GenrePromptEncoder(text=(items, rating_tokens, self.prompts.text("; "), budget), **common)
        )

    def soft_prompts(self, batch: dict) -> torch.Tensor | None:
        return super().soft_prompts(batch) if self.cfg.model.history == "soft" else None

    def genre_logits(self, batch: dict, prompts: torch.Tensor) -> torch.Tensor:
        """``model.align_weight``: the genre head's logits ([B, G]), a linear read-out of each row's mean soft
        prompt, trained with a multi-label BCE on the same labels as the LM's answer."""
        return self.genre_head(self.user_vectors(batch, prompts).float())

    def compute_loss(self, batch: dict) -> torch.Tensor:
        weight = float(self.cfg.model.align_weight)
        prompts = self.soft_prompts(batch)
        lm = self.token_loss(batch, prompts)
        if not weight:
            return lm
        head = nn.functional.binary_cross_entropy_with_logits(self.genre_logits(batch, prompts), batch["labels_multi"])
        if self._trainer is not None:
            self.log("train/align_loss", head, batch_size=len(batch["labels_multi"]))
        return lm + weight * head

    def rank(self, batch: dict, k: int, candidates=None):
        raise ConfigError("uem_genres predicts genre sets (predict_labels), not ranked items")

    @torch.no_grad()
    def predict_labels(self, batch: dict) -> torch.Tensor:
        """Greedy decoding after each prompt, constrained to a list of distinct genre names (at most
        ``model.max_genres``) separated by ',' and ended by EOS -> the predicted genre set [B, G] (0/1)."""
        backbone = self.backbone
        ids, mask = batch["prompt_ids"], batch["prompt_mask"]
        prompts = self.soft_prompts(batch)
        logits, cache = backbone.prefill(ids, mask, prompts)
        weight = float(self.cfg.eval.prior_weight)
        offset = float(self.cfg.eval.prior_offset)  # a shift of the head's decision threshold
        prior = (weight * (self.genre_logits(batch, prompts) + offset)).tolist() if weight else None
        rows = len(ids)
        prefix: list[list[int]] = [[] for _ in range(rows)]
        emitted: list[list[int]] = [[] for _ in range(rows)]
        done = [False] * rows
        longest = max(len(t) for t in self.genre_tokens)
        limit = int(self.cfg.model.max_genres)
        for _ in range(limit * (longest + 1) + 1):
            allowed = torch.zeros(rows, logits.shape[-1], dtype=torch.bool, device=logits.device)
            bonus = torch.zeros(rows, logits.shape[-1], device=logits.device)
            for b in range(rows):
                tokens = self._allowed(prefix[b], emitted[b], done[b], limit)
                allowed[b, tokens] = True
                if prior is not None and not done[b]:
                    bonus[b, tokens] = torch.tensor(self._prior_values(prefix[b], emitted[b], tokens, prior[b]))
            scores = torch.log_softmax(logits.float(), -1) + bonus
            choice = scores.masked_fill(~allowed, float("-inf")).argmax(-1)
            for b, token in enumerate(choice.tolist()):
                if done[b]:
                    continue
                complete = self._complete(prefix[b], emitted[b])
                if complete is not None and token in (self.sep[0], backbone.eos_token_id):
                    emitted[b].append(complete)
                    prefix[b] = []
                    done[b] = token == backbone.eos_token_id
                else:
                    prefix[b].append(token)
            if all(done):
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            logits, cache = backbone.decode(choice, mask, cache)
        out = torch.zeros(rows, self.num_labels, device=ids.device)
        for b, genres in enumerate(emitted):
            out[b, genres] = 1.0
        return out

    def _prior_values(self, prefix: list[int], emitted: list[int], tokens: list[int], prior: list[float]) -> list:
        """``eval.prior_weight``: the prior's value after each allowed token, a potential whose steps add up to the
        sum of ``prior`` (weight x the genre head's logits, i.e. its log-odds) over the genres of the finished
        answer: the best genre still reachable along a name, the completed genre plus the best remaining one
        after ',', the completed genre alone after EOS (values shared by every token of a step are left out)."""
        depth, sep, eos = len(prefix), self.sep[0], self.backbone.eos_token_id
        complete = self._complete(prefix, emitted)
        names = [(g, t) for g, t in enumerate(self.genre_tokens) if g not in emitted]
        out = []
        for token in tokens:
            if complete is not None and token in (sep, eos):
                rest = [prior[g] for g, _ in names if g != complete] if token == sep else [0.0]
                out.append(prior[complete] + (max(rest) if rest else 0.0))
            else:
                reach = [prior[g] for g, t in names if len(t) > depth and t[: depth + 1] == [*prefix, token]]
                out.append(max(reach) if reach else 0.0)
        return out

    def _complete(self, prefix: list[int], emitted: list[int]) -> int | None:
        for g, tokens in enumerate(self.genre_tokens):
            if tokens == prefix and g not in emitted:
                return g
        return None

    def _allowed(self, prefix: list[int], emitted: list[int], done: bool, limit: int) -> list[int]:
        if done:
            return [self.backbone.pad_token_id]
        depth = len(prefix)
        allowed = {
            tokens[depth]
            for g, tokens in enumerate(self.genre_tokens)
            if g not in emitted and len(tokens) > depth and tokens[:depth] == prefix
        }
        if self._complete(prefix, emitted) is not None:
            allowed.add(self.backbone.eos_token_id)
            if len(emitted) + 1 < min(limit, self.num_labels):
                allowed.add(self.sep[0])
        return sorted(allowed) or [self.backbone.eos_token_id]
