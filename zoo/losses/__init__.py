"""The loss registry: every model takes its loss from ``loss:`` in the config (``loss.name``)."""

from zoo.losses import (
    bce,  # noqa: F401  (registration)
    bpr,  # noqa: F401  (registration)
    ce,  # noqa: F401  (registration)
    logloss,  # noqa: F401  (registration)
    msl,  # noqa: F401  (registration)
    sampled_softmax,  # noqa: F401  (registration)
)
from zoo.losses.base import ItemScorer, Loss, LossConfig
from zoo.registry import LOSSES

__all__ = ["LOSSES", "ItemScorer", "Loss", "LossConfig", "build_loss"]


def build_loss(cfg) -> Loss:
    """Instantiate the registered loss named by ``cfg.name`` with its (validated) config section."""
    return LOSSES.get(cfg.name)(cfg)
