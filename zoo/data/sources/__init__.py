"""Dataset sources: each registered in ``zoo.registry.SOURCES`` as ``fn(cfg: DataConfig) -> Corpus``."""

from zoo.data.sources import amazon, amazon2018, atomic, ml1m, ml100k, msl, seqfile, yelp  # noqa: F401  (registration side effects)
