"""Laser (arXiv 2409.01605, "LLM Bi-Tuning with M-Former"): a frozen causal LM bi-tuned with trainable virtual tokens
at both ends of the prompt, full ranking of all items by cosine similarity.

* **Prefix**: the item embeddings of a trained SASRec of the same dataset and split (the ``retriever`` stage of
  ``zoo.stages``: trained once, its ``run/checkpoints/best.ckpt`` read here, frozen as a buffer, never updated)
  for the last ``data.max_len`` history items go through the M-Former (``zoo.modules.mformer``: router, query
  experts, querying transformer) and a projection to the LM's embedding size: Q prefix vectors.
  ``model.prefix=learned`` puts Q plain learned vectors there (the paper's "prefix without CF"), ``none`` nothing.
* **Text**: the user prompt (the release's wording) lists the history titles, oldest dropped beyond
  ``model.max_prompt_tokens``.
* **Suffix**: one learned vector after the text; the LM's last hidden state there is the user embedding. Items
  go through the same frozen LM and suffix from an item prompt (their title), with their own CF embedding through
  the M-Former as prefix when ``model.item_cf`` (and ``model.prefix=cf``).
  Inputs are left-padded with an attention mask: prefix + text + suffix, the suffix last in every row (the
  release passes no mask, so padding would be attended; see methods-next 2.5). All injected vectors enter through
  ``CausalLMBackbone.embed``'s :data:`INJECT` positions.
* **Frozen**: every LM weight has ``requires_grad=False`` (and is left out of checkpoints for a pretrained
  backbone: loading it again reproduces it); SASRec's table is a buffer. The M-Former, experts, router,
  projections and suffix train.

Training, both stages from one recipe:

* **Stage 1** (the ``laser_mformer`` stage below, cached like every stage artifact): ITC pretraining of the
  M-Former (top-``top_k_stage1`` routing) against the user prompt text encoded by the M-Former's own text side
  (BERT WordPiece): similarity = max over the query tokens of the normalized projections, a learnable temperature
  (init 0.07), symmetric cross-entropy with label smoothing 0.1, plus the balance loss. ``model.stage1_epochs=0``
  skips it (the M-Former starts from random weights).
* **Stage 2** (this LightningModule): cosine / ``tau`` (0.05) softmax cross-entropy of the user embedding against
  item embeddings, top-``top_k_stage2`` routing, + the balance loss when E > 1. The variant is the loss, as in
  every item model: ``loss.name=sampled_softmax`` (uniform, ``num_negatives=10``: the release's "2-1") scores the
  positive and the negatives through :meth:`score_items`, which encodes them through the LM **with gradients**;
  ``loss.name=ce`` (the release's "2-2") scores all items through :meth:`score_all` against the item matrix,
  recomputed without gradients at the start of every epoch (and of every validation / test), in chunks of
  ``model.item_chunk_size`` items so memory stays bounded.

Evaluation: ``user_state`` = the normalized user embedding, ``score_state`` = its cosine / tau against the item
matrix, under the shared protocol.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from zoo.data.datamodule import DataSpec
from zoo.data.prompts import pack_left
from zoo.errors import ConfigError, DataError
from zoo.models.base import ModelConfig, RecModel
from zoo.modules.llm import INJECT, TINY_LLAMA, CausalLMBackbone, LLMConfig, load_tokenizer
from zoo.modules.mformer import MFormer, MFormerConfig
from zoo.modules.mformer import check_config as check_mformer
from zoo.registry import MODELS
from zoo.stages import STAGES, Artifact, Stage, _wants_gpu, plain

log = logging.getLogger(__name__)

PREFIXES = ("cf", "learned", "none")
USER_PROMPT = (
    "You are an intelligent recommendation assistant. Please summarize my characteristics with a single token "
    "based on my browsing history. In chronological order, I have browsed the following items:"
)
ITEM_PROMPT = (
    "You are an intelligent recommendation assistant. Please summarize the item's characteristics with a single token:"
)


@dataclass
class LaserConfig(ModelConfig, LLMConfig, MFormerConfig):
    name: str = "laser"
    prefix: str = "cf"  # cf: M-Former over SASRec item embeddings | learned: Q plain vectors | none
    item_cf: bool = True  # items get their own CF embedding (through the M-Former) as prefix (prefix=cf only)
    tau: float = 0.05  # cosine temperature of stage 2
    max_prompt_tokens: int = 256  # user prompt text; the oldest titles are dropped beyond it
    max_item_tokens: int = 64  # item prompt text (title cut beyond it)
    item_chunk_size: int = 256  # items per LM forward when the item matrix is recomputed
    retriever_recipe: Optional[str] = None  # the frozen SASRec (default sasrec_<data.name>), the retriever stage
    retriever_overrides: list[str] = field(default_factory=list)
    retriever_k: int = 10  # the stage also exports candidate lists; Laser does not read them
    stage1_epochs: int = 1  # stage-1 ITC epochs over the training users (0 = no stage 1)
    stage1_max_steps: int = 0  # > 0 caps stage 1 at this many steps
    stage1_batch_size: int = 32
    stage1_lr: float = 1e-4
    stage1_weight_decay: float = 0.05
    stage1_max_text_len: int = 128  # BERT tokens of the user prompt in ITC
    itc_dim: int = 32  # ITC projection size (paper 256)
    itc_temperature: float = 0.07  # initial learnable temperature
    itc_label_smoothing: float = 0.1


def sasrec_item_table(artifact: Artifact, num_items: int) -> torch.Tensor:
    """The item embedding table [N+1, d] of the retriever stage's SASRec (its best checkpoint), frozen."""
    ckpt = artifact.path / "run" / "checkpoints" / "best.ckpt"
    if not ckpt.is_file():
        found = sorted((artifact.path / "run").rglob("*.ckpt"))
        if not found:
            raise DataError(f"laser: the retriever stage at {artifact.path} holds no SASRec checkpoint")
        ckpt = found[-1]
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    key = "encoder.item_embedding.weight"
    if key not in state:
        raise ConfigError(f"laser: {ckpt} is not a SASRec checkpoint (no {key}): set model.retriever_recipe")
    table = state[key].detach().float().clone()
    if table.shape[0] != num_items + 1:
        raise DataError(f"laser: the SASRec table has {table.shape[0] - 1} items, the corpus {num_items}")
    return table


def history_titles(titles: list[str], items: list[int]) -> str:
    return "".join(f"\n>>{n}. {titles[i]}" for n, i in enumerate(items, start=1))


class LaserPromptEncoder:
    """Batch transform: ``input_ids`` / ``attention_mask`` (left-padded) = ``prefix`` INJECT positions + user
    prompt tokens (head + numbered history titles, oldest dropped beyond ``budget``) + one INJECT (the suffix).
    A plain object, cheap to pickle into DataLoader workers."""

    def __init__(
        self, head: list[int], titles: list[list[int]], numbers: list[list[int]], budget: int, prefix: int, pad_id: int
    ) -> None:
        self.head, self.titles, self.numbers = head, titles, numbers
        self.budget, self.prefix, self.pad_id = budget, prefix, pad_id

    def text(self, history: list[int]) -> list[int]:
        items = [i for i in history if i > 0]
        while items:
            body = [t for n, i in enumerate(items) for t in self.numbers[n] + self.titles[i]]
            if len(self.head) + len(body) <= self.budget:
                return self.head + body
            items = items[1:]
        return self.head[: self.budget]

    def __call__(self, batch: dict) -> dict:
        rows = [[INJECT] * self.prefix + self.text(h) + [INJECT] for h in batch["history"].tolist()]
        packed = pack_left(rows, None, self.pad_id)
        batch.update(input_ids=packed.input_ids, attention_mask=packed.attention_mask)
        return batch


@MODELS.register("laser")
class Laser(RecModel):
    Config = LaserConfig
    task = "sequential"
    loss_kind = "item"
    test_overrides = (  # a SASRec (d 16) of two batches, a 2-layer M-Former (d 16), 2 experts x 2 queries, 2 ITC steps
        "model.tiny_hidden=32",
        "model.mformer_hidden=16",
        "model.mformer_layers=2",
        "model.mformer_heads=2",
        "model.mformer_ffn=32",
        "model.num_experts=2",
        "model.num_queries=2",
        "model.top_k_stage1=2",
        "model.item_chunk_size=5",
        "model.stage1_max_steps=2",
        "model.stage1_batch_size=8",
        "model.max_prompt_tokens=96",
        "loss.num_negatives=3",
        "model.retriever_overrides=[trainer.max_epochs=1,trainer.limit_train_batches=2,trainer.limit_val_batches=1,"
        "trainer.limit_test_batches=1,trainer.enable_progress_bar=false,logger.name=none,model.hidden_size=16,"
        "model.inner_size=32]",
    )

    @classmethod
    def stages_for(cls, cfg) -> tuple[str, ...]:
        if cfg.model.prefix != "cf":
            return ()
        return ("retriever", "laser_mformer") if int(cfg.model.stage1_epochs) > 0 else ("retriever",)

    @classmethod
    def check_config(cls, cfg) -> None:
        m = cfg.model
        if m.prefix not in PREFIXES:
            raise ConfigError(f"unknown model.prefix '{m.prefix}' ({' | '.join(PREFIXES)})")
        if m.lora_r:
            raise ConfigError("laser keeps its LLM frozen: set model.lora_r=0")
        if m.tau <= 0 or m.item_chunk_size < 1:
            raise ConfigError(f"model.tau={m.tau} must be > 0 and model.item_chunk_size={m.item_chunk_size} >= 1")
        check_mformer(m)

    def __init__(self, cfg, datamodule, artifacts: dict | None = None) -> None:
        super().__init__(cfg, datamodule, artifacts)
        m = cfg.model
        titles = datamodule.corpus.item_text.get("title")
        if not titles:
            raise DataError(f"{datamodule.corpus.name}: laser needs item titles (item_text['title'])")
        self.backbone = CausalLMBackbone(m)
        self.backbone.requires_grad_(False)
        self.backbone.eval()
        d = self.backbone.model.get_input_embeddings().embedding_dim
        self.suffix = nn.Parameter(torch.randn(d) * 0.02)
        self.num_prefix = 0 if m.prefix == "none" else int(m.num_queries)
        self.item_prefix = m.prefix == "cf" and bool(m.item_cf)
        if m.prefix == "cf":
            table = sasrec_item_table(self.artifacts["retriever"], self.num_items)
            self.register_buffer("cf_items", table)  # the frozen SASRec: a buffer, never a parameter
            self.mformer = MFormer(m, table.shape[1])
            if "laser_mformer" in self.artifacts:
                load_query_side(self.mformer, self.artifacts["laser_mformer"].file("mformer.pt"))
            self.llm_proj = nn.Linear(int(m.mformer_hidden), d)
        elif m.prefix == "learned":
            self.prefix_tokens = nn.Parameter(torch.randn(self.num_prefix, d) * 0.02)
        tok = self.backbone.tokenizer
        text = lambda s: list(tok(s, add_special_tokens=False)["input_ids"])  # noqa: E731
        self.title_tokens = [[]] + [text(" " + str(t or "")) for t in titles[1 : self.num_items + 1]]
        self.user_head = text(USER_PROMPT)
        numbers = [text(f"\n>>{n}.") for n in range(1, int(cfg.data.max_len) + 1)]
        self.prompt_encoder = LaserPromptEncoder(
            self.user_head,
            self.title_tokens,
            numbers,
            int(m.max_prompt_tokens),
            self.num_prefix,
            self.backbone.pad_token_id,
        )
        item_head = text(ITEM_PROMPT)
        n_item_prefix = int(m.num_queries) if self.item_prefix else 0
        self.item_prompts = [[]] + [
            [INJECT] * n_item_prefix + (item_head + self.title_tokens[i])[: int(m.max_item_tokens)] + [INJECT]
            for i in range(1, self.num_items + 1)
        ]
        self._item_matrix: torch.Tensor | None = None  # normalized [N+1, d]; None = stale

    # -- the frozen LM stays in eval mode (no dropout) whatever the trainer does ---------------------------------
    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()
        return self

    def data_spec(self) -> DataSpec:
        return DataSpec(train_mode="prefix", transform=self.prompt_encoder)

    def reloadable_frozen_names(self) -> list[str]:
        """A pretrained backbone is reloaded from its files: checkpoints leave all of its weights out."""
        if self.cfg.model.backbone == TINY_LLAMA or self.backbone._resized:
            return []
        return [f"backbone.{n}" for n, _ in self.backbone.named_parameters(remove_duplicate=False)]

    # -- prefixes and the two towers -------------------------------------------------------------------------------
    def prefix_vectors(self, cf: torch.Tensor | None, mask: torch.Tensor | None, rows: int):
        """Prefix vectors [rows, Q, d] (or None) and the balance loss (or None)."""
        m = self.cfg.model
        if m.prefix == "learned":
            return self.prefix_tokens.expand(rows, -1, -1), None
        if m.prefix == "none" or cf is None:
            return None, None
        out, balance = self.mformer(cf, mask, int(m.top_k_stage2))
        return self.llm_proj(out), (balance if int(m.num_experts) > 1 else None)

    def _read_out(self, input_ids, attention_mask, prefix) -> torch.Tensor:
        suffix = self.suffix.to(self.backbone.model.dtype).expand(len(input_ids), 1, -1)
        vectors = suffix if prefix is None else torch.cat([prefix.to(suffix.dtype), suffix], dim=1)
        return self.backbone.read_out(input_ids, attention_mask, vectors).float()

    def user_embedding(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The suffix read-out of the user prompt [B, d] and the router's balance loss."""
        history = batch["history"][:, -int(self.cfg.data.max_len) :]
        cf = self.cf_items[history] if self.cfg.model.prefix == "cf" else None
        prefix, balance = self.prefix_vectors(cf, history > 0, len(history))
        return self._read_out(batch["input_ids"], batch["attention_mask"], prefix), balance

    def encode_items(self, items: torch.Tensor) -> torch.Tensor:
        """Item embeddings [n, d] of item ids [n] (item prompt + suffix, own CF prefix when ``item_cf``)."""
        packed = pack_left([self.item_prompts[i] for i in items.tolist()], None, self.backbone.pad_token_id)
        ids, mask = packed.input_ids.to(self.suffix.device), packed.attention_mask.to(self.suffix.device)
        prefix = None
        if self.item_prefix:
            cf = self.cf_items[items.to(self.suffix.device)][:, None]
            prefix, _ = self.prefix_vectors(cf, torch.ones(cf.shape[:2], dtype=torch.bool, device=cf.device), len(cf))
        return self._read_out(ids, mask, prefix)

    @torch.no_grad()
    def build_item_matrix(self, chunk_size: int | None = None) -> torch.Tensor:
        """Normalized embeddings of every item [N+1, d] (row 0 = padding, zeros), without gradients, in eval
        mode, ``chunk_size`` items per LM forward (default ``model.item_chunk_size``)."""
        chunk = int(chunk_size or self.cfg.model.item_chunk_size)
        was_training = self.training
        self.eval()
        try:
            rows = [
                F.normalize(self.encode_items(torch.arange(s, min(s + chunk, self.num_items + 1))), dim=-1)
                for s in range(1, self.num_items + 1, chunk)
            ]
        finally:
            self.train(was_training)
        out = torch.cat(rows)
        return torch.cat([out.new_zeros(1, out.shape[1]), out])

    def item_matrix(self) -> torch.Tensor:
        if self._item_matrix is None or self._item_matrix.device != self.suffix.device:
            self._item_matrix = self.build_item_matrix()
        return self._item_matrix

    def forget_item_matrix(self) -> None:
        """The weights changed (a new epoch, a loaded checkpoint): the item matrix is recomputed on next use."""
        self._item_matrix = None

    def on_train_epoch_start(self) -> None:
        self.forget_item_matrix()

    def on_validation_epoch_start(self) -> None:
        self.forget_item_matrix()

    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        self.forget_item_matrix()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self.forget_item_matrix()

    # -- ItemScorer: what the item losses call ---------------------------------------------------------------------
    def score_all(self, hidden: torch.Tensor) -> torch.Tensor:
        """Cosine / tau of user embeddings [n, d] against the item matrix (no gradient to the items)."""
        return F.normalize(hidden, dim=-1) @ self.item_matrix().T / self.cfg.model.tau

    def score_items(self, hidden: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Cosine / tau against the given items [n, k]: encoded through the LM with gradients while training
        (each distinct item once), read from the item matrix otherwise."""
        if self.training and torch.is_grad_enabled():
            distinct, where = torch.unique(items, return_inverse=True)
            table = F.normalize(self.encode_items(distinct), dim=-1)[where]
        else:
            table = self.item_matrix()[items]
        return torch.einsum("nd,nkd->nk", F.normalize(hidden, dim=-1), table) / self.cfg.model.tau

    def compute_loss(self, batch: dict) -> torch.Tensor:
        user, balance = self.user_embedding(batch)
        loss = self.loss(user, batch["target"], self)
        if balance is not None:
            loss = loss + balance
            if self._trainer is not None:
                self.log("train/balance", balance, batch_size=len(user))
        return loss

    def user_state(self, batch: dict) -> torch.Tensor:
        return F.normalize(self.user_embedding(batch)[0], dim=-1)

    def score_state(self, state: torch.Tensor, start: int, end: int) -> torch.Tensor:
        return state @ self.item_matrix()[start:end].T / self.cfg.model.tau


def load_query_side(mformer: MFormer, path: Path) -> None:
    """Load the stage-1 M-Former's weights that stage 2 uses (everything but its text side)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    own = mformer.state_dict()
    missing = [k for k in own if k not in state or state[k].shape != own[k].shape]
    if missing:
        raise ConfigError(f"laser: the stage-1 M-Former at {path} does not fit this model (e.g. {missing[0]})")
    mformer.load_state_dict({k: state[k] for k in own})


# -- stage 1: ITC pretraining of the M-Former --------------------------------------------------------------------
STAGE1_KEYS = (
    "mformer_hidden",
    "mformer_layers",
    "mformer_heads",
    "mformer_ffn",
    "mformer_dropout",
    "cross_every",
    "num_experts",
    "num_queries",
    "top_k_stage1",
    "mformer_router",
    "balance_alpha",
    "stage1_epochs",
    "stage1_max_steps",
    "stage1_batch_size",
    "stage1_lr",
    "stage1_weight_decay",
    "stage1_max_text_len",
    "itc_dim",
    "itc_temperature",
    "itc_label_smoothing",
)


class ITCHead(nn.Module):
    """Projections of the query outputs and of the text [CLS] to ``dim``, and the learnable temperature."""

    def __init__(self, hidden: int, dim: int, temperature: float) -> None:
        super().__init__()
        self.behavior_proj, self.text_proj = nn.Linear(hidden, dim), nn.Linear(hidden, dim)
        self.temperature = nn.Parameter(torch.tensor(float(temperature)))

    def forward(self, queries: torch.Tensor, text_cls: torch.Tensor, smoothing: float) -> torch.Tensor:
        q = F.normalize(self.behavior_proj(queries), dim=-1)  # [B, Q, D]
        t = F.normalize(self.text_proj(text_cls), dim=-1)  # [B, D]
        sim = torch.einsum("bqd,cd->bcq", q, t).amax(-1) / self.temperature.clamp(0.001, 0.5)  # max over queries
        labels = torch.arange(len(sim), device=sim.device)
        return 0.5 * (
            F.cross_entropy(sim, labels, label_smoothing=smoothing)
            + F.cross_entropy(sim.T, labels, label_smoothing=smoothing)
        )


def itc_examples(corpus, max_len: int) -> tuple[np.ndarray, list[list[int]]]:
    """Training users and the last ``max_len`` items of their training part (s[:n-2], the leave-one-out split)."""
    users, histories = [], []
    for u in range(corpus.num_users):
        begin, end = int(corpus.offsets[u]), int(corpus.offsets[u + 1]) - 2
        if end - begin >= 1:
            users.append(u)
            histories.append(corpus.items[max(begin, end - max_len) : end].tolist())
    if not users:
        raise DataError(f"{corpus.name}: no user has a training item for Laser's stage 1")
    return np.asarray(users), histories


@STAGES.register("laser_mformer")
class LaserMFormerStage(Stage):
    """Stage 1 of Laser: the M-Former pretrained by ITC against the user prompt text over the frozen SASRec's item
    embeddings (``mformer.pt``: its full state dict, text side included)."""

    name = "laser_mformer"
    version = 1
    needs = ("retriever",)

    def inputs(self, cfg, corpus):
        m = cfg.model
        return {
            "model": {k: plain(m[k]) for k in STAGE1_KEYS},
            "max_len": int(cfg.data.max_len),
            "seed": int(cfg.seed),
        }

    def build(self, cfg, corpus, out, upstream):
        m = cfg.model
        torch.manual_seed(int(cfg.seed))
        started = time.time()
        table = sasrec_item_table(upstream["retriever"], corpus.num_items)
        tokenizer = load_tokenizer(LLMConfig(backbone=TINY_LLAMA))  # BERT WordPiece, the Q-Former's text side
        max_text = int(m.stage1_max_text_len)
        device = torch.device("cuda" if _wants_gpu(cfg) else "cpu")
        table = table.to(device)
        mformer = MFormer(m, table.shape[1], text_vocab=len(tokenizer), max_text_len=max_text).to(device)
        head = ITCHead(int(m.mformer_hidden), int(m.itc_dim), float(m.itc_temperature)).to(device)
        params = [p for p in [*mformer.parameters(), *head.parameters()]]
        decay = [p for p in params if p.ndim > 1]
        rest = [p for p in params if p.ndim <= 1]  # biases, norms, the temperature: no weight decay
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": float(m.stage1_weight_decay)}, {"params": rest, "weight_decay": 0.0}],
            lr=float(m.stage1_lr),
        )
        titles = corpus.item_text.get("title") or [""] * (corpus.num_items + 1)
        _, histories = itc_examples(corpus, int(cfg.data.max_len))
        texts = [USER_PROMPT + history_titles(titles, h) for h in histories]
        generator = torch.Generator().manual_seed(int(cfg.seed))
        batch_size, max_steps = int(m.stage1_batch_size), int(m.stage1_max_steps)
        steps, losses = 0, []
        mformer.train()
        for _ in range(int(m.stage1_epochs)):
            losses = []
            for rows in torch.randperm(len(texts), generator=generator).split(batch_size):
                if len(rows) < 2:  # a contrastive batch needs negatives
                    continue
                rows = rows.tolist()
                width = max(len(histories[r]) for r in rows)
                history = torch.tensor([[0] * (width - len(histories[r])) + histories[r] for r in rows], device=device)
                enc = tokenizer(
                    [texts[r] for r in rows], truncation=True, max_length=max_text, padding=True, return_tensors="pt"
                ).to(device)
                queries, balance = mformer(table[history], history > 0, int(m.top_k_stage1))
                text_cls = mformer.encode_text(enc["input_ids"], enc["attention_mask"].bool())[:, 0]
                loss = head(queries, text_cls, float(m.itc_label_smoothing)) + balance
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
                steps += 1
                if max_steps and steps >= max_steps:
                    break
            if max_steps and steps >= max_steps:
                break
        torch.save({k: v.cpu() for k, v in mformer.state_dict().items()}, out / "mformer.pt")
        final = float(np.mean(losses)) if losses else math.nan
        log.info("stage laser_mformer: %d ITC steps, last-epoch loss %.4f, %.1f s", steps, final, time.time() - started)
        return {"laser_mformer/itc_loss": final, "laser_mformer/steps": steps}
