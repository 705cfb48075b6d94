"""Data: dataset sources -> one canonical Corpus (cached) -> the shared sequential DataModule."""

from zoo.data.corpus import Corpus, FixedSplit
from zoo.data.datamodule import DataSpec, SequentialDataModule
from zoo.data.loading import load_corpus

__all__ = ["Corpus", "DataSpec", "FixedSplit", "SequentialDataModule", "load_corpus"]
