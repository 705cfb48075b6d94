"""Task families. A model class declares its family (``task = "sequential" | "generative" | "ctr"``); the family
picks the DataModule, the evaluator, the default monitor (``trainer.monitor`` left null) and the metric columns
the leaderboard shows.

* ``sequential``: the model scores items for a user (``user_state`` + ``score_state``); ranking metrics.
* ``generative``: the model returns ranked item-id lists (``rank(batch, k, candidates=None)``); ranking metrics
  plus the invalid-ID and duplicate rates of the lists.
* ``ctr``: the model predicts the click logit of a (user, item) pair with context features (``predict(batch)``);
  AUC and LogLoss on the CTR view of a rated corpus (``zoo.data.ctr``).
* ``multilabel``: the model predicts a set of labels per user (``predict_labels(batch)``, [B, G] 0/1; UEM's
  preferred genres); sample-averaged, micro and macro F1 (``zoo.metrics.multilabel``) on held-out users.

A new family is one more :class:`Task` registered in ``TASKS``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from zoo.evaluation import CTREvaluator, RankingEvaluator
from zoo.metrics.multilabel import MultiLabelEvaluator
from zoo.registry import Registry


@dataclass(frozen=True)
class Task:
    name: str
    datamodule: Callable[..., Any]  # (cfg, protocol, corpus=None) -> DataModule
    evaluator: type  # (model, ks) -> nn.Module with update(model, batch) / compute() / reset()
    monitor: str  # the default trainer.monitor
    monitor_mode: str  # whether larger (max) or smaller (min) is better
    columns: tuple[str, ...]  # the test metrics the leaderboard shows
    ranking: bool  # whether the ranking protocol (candidates, mask-seen) applies


def _sequential_datamodule(cfg, protocol, corpus=None):
    from zoo.data.datamodule import SequentialDataModule

    return SequentialDataModule(cfg.data, seed=cfg.seed, corpus=corpus, protocol=protocol)


def _ctr_datamodule(cfg, protocol, corpus=None):
    from zoo.data.ctr import CTRDataModule

    return CTRDataModule(cfg.data, seed=cfg.seed, corpus=corpus, threshold=cfg.data.ctr_threshold)


def _multilabel_datamodule(cfg, protocol, corpus=None):
    from zoo.models.uem import GenreDataModule

    return GenreDataModule(cfg.data, cfg.model, seed=cfg.seed, corpus=corpus)


RANKING_COLUMNS = ("recall@5", "ndcg@5", "recall@10", "ndcg@10")
TASKS: Registry[Task] = Registry("task")
TASKS.register(
    "sequential",
    Task("sequential", _sequential_datamodule, RankingEvaluator, "val/ndcg@10", "max", RANKING_COLUMNS, True),
)
TASKS.register(
    "generative",
    Task("generative", _sequential_datamodule, RankingEvaluator, "val/ndcg@10", "max", RANKING_COLUMNS, True),
)
TASKS.register("ctr", Task("ctr", _ctr_datamodule, CTREvaluator, "val/auc", "max", ("auc", "logloss"), False))
MULTILABEL_COLUMNS = ("f1", "micro_f1", "macro_f1")
TASKS.register(
    "multilabel",
    Task("multilabel", _multilabel_datamodule, MultiLabelEvaluator, "val/f1", "max", MULTILABEL_COLUMNS, False),
)


def task_of(model_cls) -> Task:
    return TASKS.get(getattr(model_cls, "task", "sequential"))
