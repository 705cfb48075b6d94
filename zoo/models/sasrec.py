"""SASRec (Kang & McAuley, ICDM 2018): causal self-attention over the item history, scored against the tied item
embeddings. The ID baseline of the zoo, PALR's retriever (:func:`export_candidates`) and Laser's frozen
collaborative encoder (:meth:`SASRec.item_embeddings`, :meth:`SASRec.user_states`).

Trains in ``sequence`` mode: one row per user, the loss at every non-padded position (the next item of each
prefix), which supervises the same (prefix -> next item) pairs as one example per prefix in a single pass. A
training part longer than ``data.max_len`` would lose its older pairs (MovieLens users have hundreds of items):
with ``data.train_len`` > ``data.max_len`` the row keeps its last ``train_len`` items and is cut into overlapping
windows of ``max_len`` (stride ``max_len // 2``) in which every pair is trained exactly once, with at least half a
window of context, close to RecBole's one example per prefix at a fraction of its cost. ``model.train_rows=prefix``
trains RecBole's way instead: one row per (user, prefix), the loss at its last position only. Any
``item`` loss of the registry plugs in (``ce`` full softmax, ``bce``, ``bpr``, ``sampled_softmax``): the model is
their :class:`zoo.losses.ItemScorer`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from zoo.data.candidates import save_candidates
from zoo.data.datamodule import DataSpec, ExampleDataset, Examples, SequentialDataModule
from zoo.errors import ConfigError
from zoo.metrics.chunked import top_k_items
from zoo.models.base import ModelConfig, RecModel
from zoo.modules.sequence_encoder import SequenceEncoder
from zoo.progress import Progress
from zoo.registry import MODELS

log = logging.getLogger(__name__)


@dataclass
class SASRecConfig(ModelConfig):
    name: str = "sasrec"
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 2
    inner_size: int = 256  # feed-forward width
    dropout: float = 0.5  # embeddings and residual branches
    attn_dropout: float = 0.5  # attention probabilities
    activation: str = "gelu"  # gelu | relu
    layer_norm_eps: float = 1e-12
    init_std: float = 0.02
    export_candidates_k: int = 0  # > 0: write <run_dir>/candidates.npz (top-k per user) after testing
    train_rows: str = "sequence"  # sequence (one row per user, loss at every position) | prefix (RecBole's rows)


@MODELS.register("sasrec")
class SASRec(RecModel):
    Config = SASRecConfig
    loss_kind = "item"

    @classmethod
    def check_config(cls, cfg) -> None:
        if cfg.model.train_rows not in ("sequence", "prefix"):
            raise ConfigError(f"unknown model.train_rows '{cfg.model.train_rows}' (sequence | prefix)")

    def __init__(self, cfg, datamodule: SequentialDataModule, artifacts: dict | None = None) -> None:
        super().__init__(cfg, datamodule, artifacts)
        m = cfg.model
        if m.export_candidates_k < 0 or m.export_candidates_k > self.num_items:
            raise ConfigError(f"model.export_candidates_k must be in 0..{self.num_items}, got {m.export_candidates_k}")
        self.max_len = int(cfg.data.max_len)
        self.encoder = SequenceEncoder(
            num_items=self.num_items,
            max_len=self.max_len,
            hidden_size=m.hidden_size,
            num_layers=m.num_layers,
            num_heads=m.num_heads,
            inner_size=m.inner_size,
            dropout=m.dropout,
            attn_dropout=m.attn_dropout,
            activation=m.activation,
            layer_norm_eps=m.layer_norm_eps,
            init_std=m.init_std,
        )

    def data_spec(self) -> DataSpec:
        return DataSpec(train_mode=self.cfg.model.train_rows)

    def prepare(self, datamodule: SequentialDataModule) -> None:
        """Hand the loss the training item counts (used by popularity-sampled softmax; ignored by the others)."""
        self.loss.connect(item_counts=torch.from_numpy(datamodule.train_item_counts("val")))

    # -- ItemScorer (what the item losses call) --------------------------------------------------------------
    def score_all(self, hidden: torch.Tensor) -> torch.Tensor:
        """[N, d] -> [N, num_items + 1] logits against the tied item embeddings (column 0 = padding)."""
        return hidden @ self.encoder.item_embedding.weight.T

    def score_items(self, hidden: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """[N, d], [N, k] item ids -> [N, k] logits."""
        return torch.einsum("nd,nkd->nk", hidden, self.encoder.item_embedding(items))

    # -- training and scoring --------------------------------------------------------------------------------
    def encode(self, history: torch.Tensor) -> torch.Tensor:
        """Hidden states [B, L, d] of the most recent ``max_len`` items of ``history``."""
        return self.encoder(history[:, -self.max_len :])

    def compute_loss(self, batch: dict) -> torch.Tensor:
        if "targets" not in batch:  # one target per row (sources with fixed splits)
            return self.loss(self.encode(batch["history"])[:, -1], batch["target"], self)
        history, targets = batch["history"], batch["targets"]  # sequence mode: the next item at every position
        if history.shape[1] > self.max_len:
            history, targets = self.training_windows(history, targets)
        hidden = self.encoder(history)
        positions = targets != 0
        return self.loss(hidden[positions], targets[positions], self)

    def training_windows(self, history: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cut rows longer than ``max_len`` into windows of ``max_len`` with stride ``max_len // 2``.

        A window's targets are kept in its last ``stride`` columns only (the first window keeps all), so every
        target of a row is trained in exactly one window and sees at least ``max_len - stride`` items of context
        (or all of its history). Windows left without targets are dropped. Returns [W, max_len] ids and targets.
        """
        length, stride = self.max_len, max(self.max_len // 2, 1)
        pad = -(history.shape[1] - length) % stride
        history = F.pad(history, (pad, 0))
        targets = F.pad(targets, (pad, 0))
        windows = history.unfold(1, length, stride).reshape(-1, length)
        window_targets = targets.unfold(1, length, stride).clone()
        window_targets[:, 1:, : length - stride] = 0  # trained in the previous window
        window_targets = window_targets.reshape(-1, length)
        keep = (window_targets != 0).any(dim=1)
        return windows[keep], window_targets[keep]

    def user_state(self, batch: dict) -> torch.Tensor:
        return self.encode(batch["history"])[:, -1]

    def score_state(self, state: torch.Tensor, start: int, end: int) -> torch.Tensor:
        return state @ self.encoder.item_embedding.weight[start:end].T

    # -- what other methods read -----------------------------------------------------------------------------
    def item_embeddings(self) -> torch.Tensor:
        """The item embedding table [N+1, d] (row 0 = padding), detached: a frozen copy for Laser's M-Former."""
        return self.encoder.item_embedding.weight.detach().clone()

    @torch.no_grad()
    def user_states(self, batch: dict) -> torch.Tensor:
        """User representations [B, d] (last position's hidden state), without gradients. Call ``eval()`` first
        for deterministic states (dropout)."""
        return self.user_state(batch)

    def on_test_end(self) -> None:
        k = self.cfg.model.export_candidates_k
        if k > 0 and self.trainer.is_global_zero:
            export_candidates(self, self.trainer.datamodule, k, Path(self.trainer.default_root_dir) / "candidates.npz")


def candidate_examples(datamodule: SequentialDataModule, split: str) -> Examples:
    """The rows whose candidates are exported for ``split``.

    Under leave-one-out, ``train`` ranks from the training part s[:n-2] (the history as of the validation target:
    what a re-ranker trained on the user's training examples may see), so its lists equal ``val``'s for the same
    users; ``test`` ranks from s[:n-1]. Sources with their own split export one row per example of each split.
    """
    if split == "train" and not datamodule.corpus.fixed_splits:
        return datamodule.examples("val")
    return datamodule.examples(split)


def export_candidates(model: RecModel, datamodule: SequentialDataModule, k: int, path: str | Path) -> Path:
    """Write the top-``k`` items of every user for the splits train, val and test to ``path``
    (:func:`zoo.data.candidates.save_candidates` format; see :func:`candidate_examples` for the histories)."""
    if not 0 < k <= model.num_items:
        raise ConfigError(f"candidates k must be in 1..{model.num_items}, got {k}")
    was_training = model.training
    model.eval()
    lists: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    batch_size = int(datamodule.cfg.eval_batch_size)
    chunk_size = int(model.cfg.eval.item_chunk_size)
    for split in ("train", "val", "test"):
        examples = candidate_examples(datamodule, split)
        rows = ExampleDataset(examples, datamodule.max_len, sequence_targets=False, transform=datamodule.spec.transform)
        tops = []
        progress = Progress(len(examples), f"candidates {split}", "users", log=log)
        for start in range(0, len(examples), batch_size):
            batch = rows[list(range(start, min(start + batch_size, len(examples))))]
            batch = {key: value.to(model.device) if torch.is_tensor(value) else value for key, value in batch.items()}
            state = model.user_state(batch)
            scores = lambda s, e, state=state: model.score_state(state, s, e)  # noqa: E731
            tops.append(top_k_items(scores, model.num_items, k, chunk_size).cpu())
            progress.update(len(tops[-1]))
        progress.close()
        items = torch.cat(tops).numpy() if tops else np.zeros((0, k), dtype=np.int64)
        lists[split] = (examples.user, items)
    model.train(was_training)
    save_candidates(path, lists)
    return Path(path)
