"""CTR metrics (KAR and other click-through-rate backbones): AUC, LogLoss and GAUC.

* **AUC** is the Mann-Whitney statistic: the probability that a random positive scores above a random negative,
  ties counting one half (equal to ``sklearn.metrics.roc_auc_score``). It is computed from average ranks in
  float64 on the raw predictions, so logits work as well as probabilities and nothing saturates (a float32
  sigmoid would turn distinct large logits into ties).
* **LogLoss** is the mean binary cross-entropy; probabilities are clipped to [1e-15, 1 - 1e-15] as in RecBole's
  ``LogLoss`` (``from_logits=True`` uses the numerically stable logit form instead, no clipping needed).
* **GAUC** (DIN, Zhou et al. 2018) is the AUC of each user's impressions, averaged with weights = the user's
  number of impressions (``weight="impressions"``, the DIN/KAR definition) or positives (``weight="positives"``,
  RecBole's ``GAUC``). Users whose impressions are all one class have no AUC and are skipped.

Labels are 0/1. An evaluation set with a single class (or no user with both) has no AUC: ``DataError``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from zoo.errors import ConfigError, DataError

LOGLOSS_EPS = 1e-15
GAUC_WEIGHTS = ("impressions", "positives")


def auc(preds: torch.Tensor, labels: torch.Tensor) -> float:
    """ROC AUC of scores (probabilities or logits) against 0/1 labels, ties counting one half."""
    preds, labels = _check(preds, labels)
    values, _, _ = grouped_auc(preds, labels, torch.zeros_like(labels, dtype=torch.long))
    if not torch.isfinite(values).all():
        raise DataError("AUC needs both positive and negative labels; the evaluation set has one class")
    return float(values[0])


def log_loss(preds: torch.Tensor, labels: torch.Tensor, from_logits: bool = False) -> float:
    """Mean binary cross-entropy of probabilities (or logits with ``from_logits``) against 0/1 labels."""
    preds, labels = _check(preds, labels)
    if from_logits:
        return float(F.binary_cross_entropy_with_logits(preds, labels))
    if preds.min() < 0 or preds.max() > 1:
        raise DataError("log_loss takes probabilities in [0, 1]; pass from_logits=True for logits")
    return float(F.binary_cross_entropy(preds.clamp(LOGLOSS_EPS, 1 - LOGLOSS_EPS), labels))


def gauc(preds: torch.Tensor, labels: torch.Tensor, users: torch.Tensor, weight: str = "impressions") -> float:
    """User-grouped AUC weighted by each user's impressions (or positives); one-class users are skipped."""
    if weight not in GAUC_WEIGHTS:
        raise ConfigError(f"unknown GAUC weight '{weight}' ({' | '.join(GAUC_WEIGHTS)})")
    preds, labels = _check(preds, labels)
    users = users.reshape(-1)
    if users.shape != labels.shape or users.is_floating_point():
        raise DataError(f"users must be integer ids, one per prediction; got {users.dtype} {tuple(users.shape)}")
    values, impressions, positives = grouped_auc(preds, labels, users)
    defined = torch.isfinite(values)
    if not defined.any():
        raise DataError("GAUC needs at least one user with both positive and negative labels")
    weights = (impressions if weight == "impressions" else positives)[defined]
    return float((values[defined] * weights).sum() / weights.sum())


def grouped_auc(
    preds: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-group AUC (NaN for one-class groups), impressions and positives, ordered by sorted group id.

    Vectorised Mann-Whitney: sort by (group, score), give tied scores their average rank within the group,
    AUC = (sum of positive ranks - P(P+1)/2) / (P * N).
    """
    preds, labels = preds.double(), labels.double()
    _, group = torch.unique(groups, return_inverse=True)
    order = torch.argsort(preds, stable=True)
    order = order[torch.argsort(group[order], stable=True)]
    score, group, label = preds[order], group[order], labels[order]
    num_groups = int(group.max()) + 1 if len(group) else 0
    impressions = torch.bincount(group, minlength=num_groups).double()
    positives = torch.bincount(group, weights=label, minlength=num_groups)
    group_start = torch.cumsum(impressions, 0) - impressions
    position = torch.arange(len(score), dtype=torch.float64, device=score.device) - group_start[group] + 1
    new_block = torch.ones_like(label, dtype=torch.bool)
    new_block[1:] = (group[1:] != group[:-1]) | (score[1:] != score[:-1])
    block = torch.cumsum(new_block.long(), 0) - 1
    block_first = position[new_block]
    block_size = torch.bincount(block).double()
    average_rank = (block_first + (block_size - 1) / 2)[block]
    positive_rank_sum = torch.bincount(group, weights=average_rank * label, minlength=num_groups)
    negatives = impressions - positives
    pairs = positives * negatives
    values = (positive_rank_sum - positives * (positives + 1) / 2) / pairs
    values = torch.where(pairs > 0, values, torch.full_like(values, float("nan")))
    return values, impressions, positives


def ctr_metrics(
    preds: torch.Tensor, labels: torch.Tensor, users: torch.Tensor | None = None, from_logits: bool = False
) -> dict[str, float]:
    """``{"auc", "logloss"}`` and, with ``users``, ``"gauc"`` (impression-weighted)."""
    out = {"auc": auc(preds, labels), "logloss": log_loss(preds, labels, from_logits)}
    if users is not None:
        out["gauc"] = gauc(preds, labels, users)
    return out


def _check(preds: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    preds, labels = preds.reshape(-1), labels.reshape(-1)
    if preds.shape != labels.shape or not len(preds):
        raise DataError(
            f"CTR metrics need one label per prediction, got {len(preds)} predictions, {len(labels)} labels"
        )
    if not preds.is_floating_point():
        preds = preds.double()
    if torch.isnan(preds).any():
        raise DataError("CTR predictions contain NaN")
    labels = labels.double()
    if not ((labels == 0) | (labels == 1)).all():
        raise DataError("CTR labels must be 0 or 1")
    return preds.double(), labels


class CTRMetrics(Metric):
    """Accumulates predictions, labels (and users, for GAUC) over batches and DDP ranks; computes AUC, LogLoss and
    GAUC on everything at once (these metrics do not decompose into per-batch sums)."""

    full_state_update = False

    def __init__(self, from_logits: bool = False, gauc_weight: str = "impressions", **kwargs) -> None:
        super().__init__(**kwargs)
        if gauc_weight not in GAUC_WEIGHTS:
            raise ConfigError(f"unknown GAUC weight '{gauc_weight}' ({' | '.join(GAUC_WEIGHTS)})")
        self.from_logits = from_logits
        self.gauc_weight = gauc_weight
        for name in ("preds", "labels", "users"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, preds: torch.Tensor, labels: torch.Tensor, users: torch.Tensor | None = None) -> None:  # type: ignore[override]
        preds, labels = preds.detach().reshape(-1), labels.detach().reshape(-1)
        if preds.shape != labels.shape:
            raise DataError(f"CTRMetrics.update: {len(preds)} predictions for {len(labels)} labels")
        if self.preds and (users is not None) != bool(self.users):
            raise DataError("CTRMetrics.update: pass users with every batch or with none")
        if users is not None:
            users = users.detach().reshape(-1)
            if users.shape != labels.shape:
                raise DataError(f"CTRMetrics.update: {len(users)} users for {len(labels)} labels")
            self.users.append(users.long())
        self.preds.append(preds.double())
        self.labels.append(labels.double())

    def compute(self) -> dict[str, torch.Tensor]:
        preds, labels = dim_zero_cat(self.preds), dim_zero_cat(self.labels)
        out = {"auc": auc(preds, labels), "logloss": log_loss(preds, labels, self.from_logits)}
        if len(self.users) if isinstance(self.users, list) else self.users.numel():
            users = dim_zero_cat(self.users)
            defined = torch.isfinite(grouped_auc(preds, labels, users)[0]).any()
            # no user with both labels (a tiny evaluation set): GAUC is undefined, NaN rather than a failed run
            out["gauc"] = gauc(preds, labels, users, self.gauc_weight) if defined else float("nan")
        return {name: torch.tensor(value, dtype=torch.float64) for name, value in out.items()}
