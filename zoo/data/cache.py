"""Cache of processed corpora, so that a second run skips parsing the source files.

One uncompressed ``.npz`` per corpus: the integer / float arrays as they are, each string list (raw ids, an item
text field, a user feature) as NUL-separated UTF-8 bytes, and a small JSON header. Loading needs no pickle
(``allow_pickle=False``), so a cache file cannot run code; reads take 1.1-2x the time of unpickling the Corpus
and 2-3x less than one JSON blob for all strings (``benchmarks/data_load.py``), tens of milliseconds.

Files are written atomically; the name is a hash (the *key*) of ``FORMAT_VERSION``, the source name, the
``data:`` settings that change the corpus, and a fingerprint of every file the source reads: its size, mtime
and a SHA-256 of its content (the whole file up to ``FULL_HASH_BYTES``, beyond that its first and last
``EDGE_BYTES``), so editing or replacing an input file (or adding an optional one, such as a titles file) makes
a fresh entry, even when the edit keeps the size and mtime (``cp -p``, a coarse-mtime filesystem). Hashing
costs little next to parsing: the key of Beauty (four input files, 4.2 MB) takes ~3 ms of a ~12 ms warm load,
against 0.4 s to build the corpus (2-core CPU); a multi-GiB raw dump costs two 1 MiB reads. The key is also
stored inside the file and checked on load, so a file copied or renamed onto another corpus' entry is a miss.

A cache file that cannot be read (zero bytes, truncated, another format, another key) is a miss: the corpus
is rebuilt and the entry overwritten, with a warning.

A source opts in by declaring its input files with ``@source_inputs(fn)``; sources that do not are loaded
without a cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np

from zoo.data.corpus import Corpus, FixedSplit
from zoo.data.download import data_root, user_cache_dir
from zoo.errors import DataError
from zoo.io import atomic_path

log = logging.getLogger(__name__)
Source = TypeVar("Source", bound=Callable[..., Corpus])

FORMAT_VERSION = 3  # 3: the key is stored in the header and checked on load
FULL_HASH_BYTES = 64 << 20  # inputs up to this size are hashed whole
EDGE_BYTES = 1 << 20  # larger inputs: the first and the last MiB (with the size and mtime)
CACHE_DIR_ENV = "ZOO_CACHE_DIR"
CORPUS_SETTINGS = ("path", "titles", "k_core", "min_seq_len")  # data: keys that change a corpus
_ARRAYS = ("offsets", "items", "timestamps", "ratings")
_SPLIT_ARRAYS = ("users", "history", "offsets", "targets")


def source_inputs(files: Callable[..., list[Path]]) -> Callable[[Source], Source]:
    """Declare the files a source reads (``files(cfg) -> paths``, optional ones included whether present or
    not) so that ``load_corpus`` can cache its corpus keyed by their size and modification time."""

    def mark(source: Source) -> Source:
        source.input_files = files
        return source

    return mark


def cache_root(cfg=None) -> Path:
    """The one root of every cache of the zoo (processed corpora under ``corpora/``, stage artifacts under
    ``stages/``): ``data.cache_dir``, else ``$ZOO_CACHE_DIR``, else ``<data root>/cache`` when the data root is
    writable, else ``<user cache dir>/cache``. ``cfg`` is the ``data:`` section."""
    configured = getattr(cfg, "cache_dir", None) if cfg is not None else None
    if configured:
        return Path(configured).expanduser()
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    root = data_root(cfg)
    return root / "cache" if _writable(root) else user_cache_dir() / "cache"


def cache_dir(cfg) -> Path:
    """Where processed corpora are cached: ``<cache root>/corpora``."""
    return cache_root(cfg) / "corpora"


def _writable(path: Path) -> bool:
    while not path.exists():
        if path.parent == path:
            return False
        path = path.parent
    return path.is_dir() and os.access(path, os.W_OK)


def content_hash(path: Path, size: int) -> str:
    """SHA-256 of the file (whole up to ``FULL_HASH_BYTES``, else its first and last ``EDGE_BYTES``)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= FULL_HASH_BYTES:
            while block := f.read(1 << 20):
                digest.update(block)
        else:
            digest.update(f.read(EDGE_BYTES))
            f.seek(size - EDGE_BYTES)
            digest.update(f.read(EDGE_BYTES))
    return digest.hexdigest()


def file_fingerprint(path: Path) -> list:
    """``[path, size, mtime_ns, content hash]`` of an input file (``None`` fields when it is absent)."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        return [str(path), None, None, None]
    stat = path.stat()
    try:
        digest = content_hash(path, stat.st_size)
    except OSError:
        digest = None
    return [str(path), stat.st_size, stat.st_mtime_ns, digest]


def cache_key(cfg, source_name: str, files: list[Path]) -> str:
    """The key of this corpus given the files its source reads (absent ones count as absent)."""
    fingerprint = [file_fingerprint(path) for path in files]
    settings = {key: getattr(cfg, key, None) for key in CORPUS_SETTINGS}
    blob = json.dumps([FORMAT_VERSION, source_name, settings, fingerprint], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def cache_path(cfg, source_name: str, files: list[Path], key: str | None = None) -> Path:
    """The cache file of this corpus given the files its source reads (absent ones count as absent)."""
    key = key or cache_key(cfg, source_name, files)
    return cache_dir(cfg) / f"{source_name}-{key}.npz"


def save_corpus(corpus: Corpus, path: Path, key: str | None = None) -> None:
    """Write ``corpus`` to ``path`` atomically (with ``key``, the cache key it is stored under)."""
    arrays = {name: getattr(corpus, name) for name in _ARRAYS if getattr(corpus, name) is not None}
    for split_name, split in corpus.fixed_splits.items():
        for field_name in _SPLIT_ARRAYS:
            arrays[f"split/{split_name}/{field_name}"] = getattr(split, field_name)
    string_lists = {"item_ids": corpus.item_ids, "user_ids": corpus.user_ids}
    string_lists.update({f"item_text/{k}": v for k, v in corpus.item_text.items()})
    string_lists.update({f"user_features/{k}": v for k, v in corpus.user_features.items()})
    for name, values in string_lists.items():
        arrays[f"strings/{name}"] = _pack(values)
    header = {
        "format_version": FORMAT_VERSION,
        "key": key,
        "name": corpus.name,
        "lengths": {name: len(values) for name, values in string_lists.items()},
        "item_text": list(corpus.item_text),
        "user_features": list(corpus.user_features),
        "fixed_splits": list(corpus.fixed_splits),
    }
    arrays["header"] = np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def _pack(values: list[str]) -> np.ndarray:
    """A string list as UTF-8 bytes: NUL-separated (fast to split back), or a JSON array if a string has a NUL."""
    if any("\0" in v for v in values):
        return np.frombuffer(b"J" + json.dumps(values).encode("utf-8"), dtype=np.uint8)
    return np.frombuffer(b"N" + "\0".join(values).encode("utf-8"), dtype=np.uint8)


def _unpack(packed: np.ndarray, length: int) -> list[str]:
    raw = packed.tobytes()
    if raw[:1] == b"J":
        values = json.loads(raw[1:].decode("utf-8"))
    else:
        values = raw[1:].decode("utf-8").split("\0") if length else []
    if len(values) != length:
        raise ValueError(f"{len(values)} strings where the header says {length}")
    return values


def load_cached_corpus(path: Path, key: str | None = None) -> Corpus:
    """Read a corpus written by ``save_corpus``; DataError if the file is unreadable, of another format, or (given
    ``key``) stored under another key."""
    try:
        with np.load(path, allow_pickle=False) as data:
            header = json.loads(data["header"].tobytes().decode("utf-8"))
            if header.get("format_version") != FORMAT_VERSION:
                raise DataError(f"{path}: cache format {header.get('format_version')}, expected {FORMAT_VERSION}")
            if key is not None and header.get("key") != key:
                raise DataError(f"{path}: holds the corpus of key {header.get('key')}, not {key}")
            strings = {key: _unpack(data[f"strings/{key}"], n) for key, n in header["lengths"].items()}
            arrays = {name: data[name] if name in data.files else None for name in _ARRAYS}
            splits = {
                name: FixedSplit(**{f: data[f"split/{name}/{f}"] for f in _SPLIT_ARRAYS})
                for name in header["fixed_splits"]
            }
        return Corpus(
            name=header["name"],
            item_ids=strings["item_ids"],
            user_ids=strings["user_ids"],
            item_text={k: strings[f"item_text/{k}"] for k in header["item_text"]},
            user_features={k: strings[f"user_features/{k}"] for k in header["user_features"]},
            fixed_splits=splits,
            **arrays,
        ).validate()
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001  a zero-byte / truncated / foreign file (EOFError, BadZipFile, ...)
        reason = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
        raise DataError(f"{path}: unreadable corpus cache ({reason})") from None


def cached(cfg, source_name: str, source, build: Callable[[], Corpus]) -> Corpus:
    """``build()``'s corpus, read from the cache when an entry for these inputs exists, else built and saved."""
    files = getattr(source, "input_files", None)
    if files is None:
        return build()
    key = cache_key(cfg, source_name, files(cfg))
    path = cache_path(cfg, source_name, [], key=key)
    if path.is_file():
        started = time.monotonic()
        try:
            corpus = load_cached_corpus(path, key=key)
            log.info("%s: corpus read from the cache %s in %.2f s", source_name, path, time.monotonic() - started)
            return corpus
        except DataError as err:
            log.warning("ignoring the corpus cache (rebuilding it): %s", err)
    started = time.monotonic()
    corpus = build()
    built = time.monotonic() - started
    key = cache_key(cfg, source_name, files(cfg))  # inputs may have been downloaded just now
    path = cache_path(cfg, source_name, [], key=key)
    try:
        save_corpus(corpus, path, key=key)
    except OSError as err:
        log.warning("could not write the corpus cache %s (%s); continuing without it", path, err)
    else:
        log.info(
            "%s: corpus built in %.1f s (%d users, %d items, %d interactions), cached at %s",
            source_name,
            built,
            corpus.num_users,
            corpus.num_items,
            len(corpus.items),
            path,
        )
    return corpus
