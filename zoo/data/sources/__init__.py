"""Dataset sources: each registered in ``zoo.registry.SOURCES`` as ``fn(cfg: DataConfig) -> Corpus``."""

from zoo.data.sources import atomic, ml100k  # noqa: F401  (registration side effects)
