"""Methods: each a LightningModule on ``RecModel``, registered by name in ``zoo.registry.MODELS``."""

from zoo.models import (
    ctr_backbones,  # noqa: F401  (registration: din, deepfm, dcnv2, autoint; KAR)
    fm,  # noqa: F401  (registration)
    laser,  # noqa: F401  (registration)
    llm_rec,  # noqa: F401  (registration)
    p5,  # noqa: F401  (registration)
    palr,  # noqa: F401  (registration)
    pop,  # noqa: F401  (registration)
    rqvae,  # noqa: F401  (registration)
    sasrec,  # noqa: F401  (registration)
    sasrec_kar,  # noqa: F401  (registration)
    tiger,  # noqa: F401  (registration)
    uem,  # noqa: F401  (registration)
)
from zoo.models.base import ModelConfig, RecModel

__all__ = ["ModelConfig", "RecModel"]
