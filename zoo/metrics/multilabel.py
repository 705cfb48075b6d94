"""Multi-label set metrics (UEM's preferred-genre task): predicted label sets against true ones, as 0/1 matrices
[B, G] (G labels).

* ``f1``: sample-averaged F1, the mean over examples of 2|P∩T| / (|P| + |T|) (1 when both sets are empty);
  the headline number, what "F1 of a user's predicted genres" means per user;
* ``micro_f1``: F1 of the pooled true/false positives over every (example, label) pair;
* ``macro_f1``: the mean over labels of each label's F1 (labels never true nor predicted are left out);
* ``precision`` / ``recall``: sample-averaged; ``exact_match``: the share of examples with P = T;
  ``pred_size``: the mean number of predicted labels.

:class:`MultiLabelMetrics` accumulates them over batches and devices (sums only, so DDP gives a single process's
numbers); :class:`MultiLabelEvaluator` is the family's evaluator (``zoo.tasks``), fed by a model's
``predict_labels(batch)``.
"""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics import Metric

from zoo.errors import DataError


def _check(preds: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if preds.shape != target.shape or preds.dim() != 2:
        raise DataError(
            f"multi-label metrics need two [B, G] matrices, got {tuple(preds.shape)} and {tuple(target.shape)}"
        )
    return preds.bool(), target.bool()


def sample_f1(preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-example F1 [B] (1 when both sets are empty)."""
    preds, target = _check(preds, target)
    hits = (preds & target).sum(1).double()
    sizes = (preds.sum(1) + target.sum(1)).double()
    return torch.where(sizes > 0, 2 * hits / sizes.clamp(min=1), torch.ones_like(hits))


def multilabel_metrics(preds: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """The metrics of the module docstring for one pair of [B, G] 0/1 matrices."""
    metric = MultiLabelMetrics(preds.shape[1])
    metric.update(preds, target)
    return {k: float(v) for k, v in metric.compute().items()}


class MultiLabelMetrics(Metric):
    full_state_update = False

    def __init__(self, num_labels: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_labels = num_labels
        for name in ("tp", "fp", "fn"):
            self.add_state(name, default=torch.zeros(num_labels, dtype=torch.float64), dist_reduce_fx="sum")
        for name in ("f1_sum", "precision_sum", "recall_sum", "exact_sum", "size_sum", "count"):
            self.add_state(name, default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:  # type: ignore[override]
        preds, target = _check(preds, target)
        if preds.shape[1] != self.num_labels:
            raise DataError(f"{preds.shape[1]} labels per example, the metric was built for {self.num_labels}")
        hits = (preds & target).double()
        self.tp += hits.sum(0)
        self.fp += (preds & ~target).double().sum(0)
        self.fn += (~preds & target).double().sum(0)
        p, t, h = preds.sum(1).double(), target.sum(1).double(), hits.sum(1)
        self.f1_sum += sample_f1(preds, target).sum()
        self.precision_sum += torch.where(p > 0, h / p.clamp(min=1), (t == 0).double()).sum()
        self.recall_sum += torch.where(t > 0, h / t.clamp(min=1), (p == 0).double()).sum()
        self.exact_sum += (preds == target).all(1).double().sum()
        self.size_sum += p.sum()
        self.count += len(preds)

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.count.clamp(min=1)
        tp, fp, fn = self.tp.sum(), self.fp.sum(), self.fn.sum()
        micro = 2 * tp / (2 * tp + fp + fn).clamp(min=1e-12)
        per_label = 2 * self.tp + self.fp + self.fn
        active = per_label > 0
        macro = (
            (2 * self.tp[active] / per_label[active]).mean() if bool(active.any()) else torch.zeros((), dtype=tp.dtype)
        )
        return {
            "f1": self.f1_sum / n,
            "micro_f1": micro,
            "macro_f1": macro,
            "precision": self.precision_sum / n,
            "recall": self.recall_sum / n,
            "exact_match": self.exact_sum / n,
            "pred_size": self.size_sum / n,
        }


class MultiLabelEvaluator(nn.Module):
    """The ``multilabel`` family's evaluator: ``model.predict_labels(batch)`` ([B, G] 0/1) against
    ``batch["labels_multi"]`` ([B, G]); G = ``model.num_labels``."""

    def __init__(self, model, ks: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.metrics = MultiLabelMetrics(int(model.num_labels))

    def update(self, model, batch: dict) -> None:
        self.metrics.update(model.predict_labels(batch), batch["labels_multi"])

    def compute(self) -> dict[str, torch.Tensor]:
        return dict(self.metrics.compute())

    def reset(self) -> None:
        self.metrics.reset()
