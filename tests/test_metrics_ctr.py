"""CTR metrics against scikit-learn: AUC (with ties), LogLoss, GAUC; the accumulating CTRMetrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import roc_auc_score

from zoo.errors import ConfigError, DataError
from zoo.metrics import CTRMetrics, auc, ctr_metrics, gauc, log_loss


def ctr_case(seed: int, n: int = 400, users: int = 30, ties: bool = False):
    gen = np.random.default_rng(seed)
    probs = gen.uniform(0.01, 0.99, n)
    if ties:
        probs = np.round(probs, 1)
    labels = (gen.uniform(size=n) < probs).astype(np.int64)
    user_ids = gen.integers(0, users, n) * 7 + 3  # arbitrary, non-contiguous ids
    user_ids[:3] = 10_000  # a user with one impression: skipped
    return probs, labels, user_ids


def sklearn_gauc(probs, labels, user_ids, weight: str = "impressions") -> float:
    total, weights = 0.0, 0.0
    for user in np.unique(user_ids):
        rows = user_ids == user
        if len(np.unique(labels[rows])) < 2:
            continue
        w = rows.sum() if weight == "impressions" else labels[rows].sum()
        total += w * roc_auc_score(labels[rows], probs[rows])
        weights += w
    return total / weights


@pytest.mark.parametrize("ties", [False, True])
def test_auc_logloss_gauc_equal_sklearn(ties):
    probs, labels, user_ids = ctr_case(seed=int(ties), ties=ties)
    p, y, u = torch.tensor(probs), torch.tensor(labels), torch.tensor(user_ids)
    assert auc(p, y) == pytest.approx(roc_auc_score(labels, probs), abs=1e-12)
    assert log_loss(p, y) == pytest.approx(sk_log_loss(labels, probs), abs=1e-12)
    for weight in ("impressions", "positives"):
        assert gauc(p, y, u, weight) == pytest.approx(sklearn_gauc(probs, labels, user_ids, weight), abs=1e-12)


def test_logits_give_the_same_auc_and_logloss_without_saturation():
    probs, labels, user_ids = ctr_case(seed=2)
    logits = torch.logit(torch.tensor(probs))
    y = torch.tensor(labels)
    assert auc(logits, y) == pytest.approx(auc(torch.tensor(probs), y), abs=1e-12)
    assert log_loss(logits, y, from_logits=True) == pytest.approx(sk_log_loss(labels, probs), abs=1e-9)
    big = torch.tensor([30.0, 40.0, 50.0])  # equal after a float32 sigmoid; still ordered here
    assert auc(big, torch.tensor([0, 1, 1])) == 1.0
    assert ctr_metrics(logits, y, torch.tensor(user_ids), from_logits=True).keys() == {"auc", "logloss", "gauc"}


def test_hand_computed_auc_with_tie():
    # positives 0.8, 0.5; negatives 0.5, 0.1: pairs (0.8>0.5, 0.8>0.1, 0.5=0.5 -> 1/2, 0.5>0.1) = 3.5 / 4
    assert auc(torch.tensor([0.8, 0.5, 0.5, 0.1]), torch.tensor([1, 1, 0, 0])) == 0.875


def test_bad_ctr_inputs():
    p = torch.tensor([0.2, 0.7, 0.4])
    with pytest.raises(DataError, match="one class"):
        auc(p, torch.tensor([1, 1, 1]))
    with pytest.raises(DataError, match="0 or 1"):
        auc(p, torch.tensor([0, 2, 1]))
    with pytest.raises(DataError, match="NaN"):
        auc(torch.tensor([0.2, float("nan"), 0.4]), torch.tensor([0, 1, 1]))
    with pytest.raises(DataError, match="one label per prediction"):
        auc(p, torch.tensor([0, 1]))
    with pytest.raises(DataError, match="probabilities"):
        log_loss(torch.tensor([-1.0, 2.0]), torch.tensor([0, 1]))
    with pytest.raises(DataError, match="both positive and negative"):
        gauc(p, torch.tensor([0, 1, 1]), torch.tensor([1, 2, 2]))
    with pytest.raises(ConfigError):
        gauc(p, torch.tensor([0, 1, 1]), torch.tensor([1, 1, 1]), weight="clicks")
    with pytest.raises(ConfigError):
        CTRMetrics(gauc_weight="clicks")


def test_ctr_metric_accumulates_batches():
    probs, labels, user_ids = ctr_case(seed=3)
    p, y, u = torch.tensor(probs), torch.tensor(labels), torch.tensor(user_ids)
    metric = CTRMetrics()
    for chunk in torch.arange(len(p)).split([100, 1, 299]):
        metric.update(p[chunk].float(), y[chunk], u[chunk])
    computed = {k: float(v) for k, v in metric.compute().items()}
    expected = ctr_metrics(p.float(), y, u)
    assert computed == pytest.approx(expected, abs=1e-12)
    without_users = CTRMetrics()
    without_users.update(p, y)
    assert set(without_users.compute()) == {"auc", "logloss"}
    with pytest.raises(DataError, match="every batch"):
        without_users.update(p, y, u)
    with pytest.raises(DataError, match="every batch"):
        metric.update(p, y)


def test_ctr_metric_gauc_is_nan_when_no_user_has_both_labels_and_the_evaluator_groups_by_user():
    from types import SimpleNamespace

    from omegaconf import OmegaConf
    from sklearn.metrics import roc_auc_score

    from zoo.evaluation import CTREvaluator

    metric = CTRMetrics(from_logits=True)
    metric.update(torch.tensor([0.3, -1.0, 2.0]), torch.tensor([1.0, 0.0, 1.0]), torch.tensor([0, 1, 2]))
    out = metric.compute()
    assert torch.isnan(out["gauc"]) and float(out["auc"]) == pytest.approx(1.0)

    def model_for(split):
        cfg = OmegaConf.create({"data": {"ctr_split": split}})
        return SimpleNamespace(cfg=cfg, predict=lambda batch: batch["logit"])

    batch = {
        "logit": torch.tensor([0.1, 0.9, 0.4, 0.2, 0.8, 0.3]),
        "label": torch.tensor([0.0, 1.0, 1.0, 1.0, 0.0, 0.0]),
        "user": torch.tensor([5, 5, 5, 7, 7, 9]),
    }
    grouped = CTREvaluator(model_for("users"))
    grouped.update(model_for("users"), batch)
    values = grouped.compute()
    expected = (3 * roc_auc_score([0, 1, 1], [0.1, 0.9, 0.4]) + 2 * roc_auc_score([1, 0], [0.2, 0.8])) / 5
    assert float(values["gauc"]) == pytest.approx(expected, abs=1e-12)
    plain = CTREvaluator(model_for("leave_one_out"))
    plain.update(model_for("leave_one_out"), batch)
    assert "gauc" not in plain.compute()
