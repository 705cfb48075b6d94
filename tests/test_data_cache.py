"""The processed-corpus cache: exact round trip, hits skip parsing, keys follow the input files and settings,
corrupt or foreign files are rebuilt, and the cache directory falls back when the data root is read-only."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from zoo.config import DataConfig
from zoo.data import cache as cache_module
from zoo.data.cache import cache_dir, cache_root, load_cached_corpus, save_corpus
from zoo.data.corpus import Corpus, FixedSplit
from zoo.data.loading import load_corpus
from zoo.data.sources import seqfile
from zoo.errors import DataError

FIXTURES = Path(__file__).parent / "fixtures" / "data"


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch) -> Path:
    """The cache root is $ZOO_CACHE_DIR; processed corpora live under its ``corpora/``."""
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "corpora"


def assert_same_corpus(a: Corpus, b: Corpus) -> None:
    assert (a.name, a.item_ids, a.user_ids) == (b.name, b.item_ids, b.user_ids)
    for name in ("offsets", "items", "timestamps", "ratings"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None and y is None) or (np.array_equal(x, y) and x.dtype == y.dtype), name
    assert a.item_text == b.item_text and a.user_features == b.user_features
    assert a.fixed_splits.keys() == b.fixed_splits.keys()
    for key, split in a.fixed_splits.items():
        for field in ("users", "history", "offsets", "targets"):
            assert np.array_equal(getattr(split, field), getattr(b.fixed_splits[key], field))


def full_corpus() -> Corpus:
    corpus = Corpus.from_sequences(
        "full",
        [[1, 2, 3], [3, 2]],
        user_ids=["ü1", "u2"],
        timestamps=np.array([1.0, 2.0, 3.0, 4.0, 5.0]),
        ratings=np.array([5, 4, 3, 2, 1], dtype=np.float32),
        item_text={"title": ["", 'Café "α"', "line\nbreak", ""]},
        user_features={"age": ["20", ""], "note": ["nul\0inside", ""]},  # a NUL: the JSON fallback
    )
    corpus.fixed_splits["test"] = FixedSplit(
        users=np.array([0, -1]), history=np.array([1, 2, 3]), offsets=np.array([0, 2, 3]), targets=np.array([3, 1])
    )
    return corpus


def test_round_trip_is_exact(tmp_path):
    corpus = full_corpus()
    path = tmp_path / "c.npz"
    save_corpus(corpus, path)
    assert_same_corpus(corpus, load_cached_corpus(path))
    assert [p.name for p in tmp_path.iterdir()] == ["c.npz"]  # no temporary file left behind


def test_other_format_version_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "c.npz"
    save_corpus(full_corpus(), path)
    monkeypatch.setattr(cache_module, "FORMAT_VERSION", cache_module.FORMAT_VERSION + 1)
    with pytest.raises(DataError, match="cache format"):
        load_cached_corpus(path)


def seq_config(path: Path, **kw) -> DataConfig:
    return DataConfig(name="seqfile", path=str(path), **kw)


def test_warm_load_reads_the_cache_without_parsing(tmp_path, monkeypatch, _cache_dir):
    path = tmp_path / "s.txt"
    path.write_text((FIXTURES / "s3rec" / "Tiny.txt").read_text())
    cold = load_corpus(seq_config(path))
    assert len(list(_cache_dir.glob("seqfile-*.npz"))) == 1

    def no_parsing(*args, **kw):
        raise AssertionError("the source was parsed on a warm load")

    monkeypatch.setattr(seqfile, "read_sequence_file", no_parsing)
    assert_same_corpus(cold, load_corpus(seq_config(path)))
    with pytest.raises(AssertionError, match="parsed"):  # cache=false always reads the source
        load_corpus(seq_config(path, cache=False))


def test_changed_file_or_settings_give_a_new_entry(tmp_path, _cache_dir):
    path = tmp_path / "s.txt"
    path.write_text("1 1 2 3\n2 2 3\n")
    assert load_corpus(seq_config(path)).num_interactions == 5
    path.write_text("1 1 2 3 4\n2 2 3\n")
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert load_corpus(seq_config(path)).num_interactions == 6
    assert load_corpus(seq_config(path, min_seq_len=3)).num_users == 1
    titles = tmp_path / "t.json"
    titles.write_text('{"1": "one"}')
    assert load_corpus(seq_config(path, titles=str(titles))).title(1) == "one"
    assert len(list(_cache_dir.glob("seqfile-*.npz"))) == 4


def test_corrupt_cache_file_is_rebuilt(tmp_path, _cache_dir, caplog):
    path = tmp_path / "s.txt"
    path.write_text("1 1 2 3\n")
    load_corpus(seq_config(path))
    (entry,) = _cache_dir.glob("seqfile-*.npz")
    entry.write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING):
        assert load_corpus(seq_config(path)).num_interactions == 3
    assert "ignoring the corpus cache" in caplog.text
    assert_same_corpus(load_cached_corpus(entry), load_corpus(seq_config(path, cache=False)))


def test_cache_dir_falls_back_when_the_root_is_read_only(tmp_path, monkeypatch):
    monkeypatch.delenv("ZOO_CACHE_DIR")
    monkeypatch.setattr(cache_module, "user_cache_dir", lambda: tmp_path / "user")
    writable = tmp_path / "root"
    assert cache_root(DataConfig(root=str(writable))) == writable / "cache"
    assert cache_dir(DataConfig(root=str(writable))) == writable / "cache" / "corpora"
    blocked = tmp_path / "a_file"  # a root that cannot be created (its parent is a file)
    blocked.write_text("")
    assert cache_root(DataConfig(root=str(blocked / "root"))) == tmp_path / "user" / "cache"
    assert cache_dir(DataConfig(root=str(blocked / "root"))) == tmp_path / "user" / "cache" / "corpora"
    read_only = tmp_path / "ro"
    read_only.mkdir()
    read_only.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        if not os.access(read_only, os.W_OK):  # (root can write anywhere)
            assert cache_root(DataConfig(root=str(read_only))) == tmp_path / "user" / "cache"
    finally:
        read_only.chmod(stat.S_IRWXU)
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "env"))
    assert cache_root(DataConfig(root=str(writable))) == tmp_path / "env"
    assert cache_dir(DataConfig(root=str(writable))) == tmp_path / "env" / "corpora"
    # data.cache_dir wins over the environment
    explicit = DataConfig(root=str(writable), cache_dir=str(tmp_path / "mine"))
    assert cache_root(explicit) == tmp_path / "mine" and cache_dir(explicit) == tmp_path / "mine" / "corpora"


def test_data_cache_dir_holds_the_corpus_cache(tmp_path, _cache_dir):
    path = tmp_path / "s.txt"
    path.write_text("1 1 2 3\n")
    load_corpus(seq_config(path, cache_dir=str(tmp_path / "mine")))
    assert len(list((tmp_path / "mine" / "corpora").glob("seqfile-*.npz"))) == 1
    assert not _cache_dir.exists()  # not under $ZOO_CACHE_DIR
