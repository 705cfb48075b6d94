"""The corpus of faults (issue #15): every row is one bad value or one bad file, run through the CLI in-process
(``zoo.run.main``), and must give ONE line on stderr, the right exit status (2: config, 1: data) and no partial
run directory. A new fault found in the wild is one more row."""

from __future__ import annotations

import json
import logging
import os
import pickle
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, SHRINK, without_log_lines

import zoo.run
from zoo.config import compose
from zoo.data.cache import cache_dir, cache_key, cache_path, load_cached_corpus
from zoo.data.download import RemoteFile, fetch
from zoo.data.loading import load_corpus
from zoo.errors import ConfigError, DataError
from zoo.io import write_text_atomic

# whether zoo/run.py removes the run directory of a run that failed before it wrote anything (the hook
# ``zoo.io.discard_failed_run_dir``); until it does, the data rows check the message and exit status only
HOOKED = "discard_failed_run_dir" in Path(zoo.run.__file__).read_text()
# whether the DataModule refuses an empty training split (``zoo.data.loading.check_training_split``)
TRAIN_CHECKED = "check_training_split" in (REPO / "zoo" / "data" / "datamodule.py").read_text()


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """Each row gets its own corpus cache, so that rows never see each other's entries."""
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))


def cli(args, capsys) -> tuple[int, str]:
    """(exit code, stderr without the zoo's INFO log lines: what the command reported)."""
    code = zoo.run.main(list(args))
    return code, without_log_lines(capsys.readouterr().err)


def run_dirs(run_root: Path) -> list[Path]:
    return [p for p in run_root.glob("*/*") if p.is_dir()] if run_root.exists() else []


def assert_one_line(err: str, *needles: str) -> None:
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, (needle, err)


# -- config faults: refused at compose time (exit 2), before any run directory exists --------------------------
NO_GPU = not torch.cuda.is_available()
CONFIG_ROWS = [
    # (recipe, overrides, words the one line must contain)
    ("pop_ml100k", ["data.batch_size=0"], ["data.batch_size"]),
    ("pop_ml100k", ["data.batch_size=-1"], ["data.batch_size"]),
    ("pop_ml100k", ["data.eval_batch_size=0"], ["data.eval_batch_size"]),
    ("pop_ml100k", ["data.eval_batch_size=-1"], ["data.eval_batch_size"]),
    ("pop_ml100k", ["trainer.max_epochs=-5"], ["trainer.max_epochs"]),
    ("pop_ml100k", ["trainer.max_epochs=-1"], ["trainer.max_epochs", "max_steps"]),  # infinite needs a bound
    ("pop_ml100k", ["trainer.max_epochs=0"], ["trainer.max_epochs"]),
    ("pop_ml100k", ["optim.lr=-1"], ["optim.lr"]),
    ("pop_ml100k", ["optim.betas=[0.9]"], ["optim.betas", "two values"]),
    ("pop_ml100k", ["optim.betas=[0.9,1.0]"], ["optim.betas"]),
    ("pop_ml100k", ["trainer.limit_train_batches=-1"], ["trainer.limit_train_batches"]),
    ("pop_ml100k", ["trainer.limit_val_batches=-1"], ["trainer.limit_val_batches"]),
    ("pop_ml100k", ["trainer.limit_test_batches=-1"], ["trainer.limit_test_batches"]),
    ("pop_ml100k", ["trainer.precision=bogus"], ["trainer.precision", "bf16-mixed"]),
    ("pop_ml100k", ["trainer.max_time=garbage"], ["trainer.max_time", "DD:HH:MM:SS"]),
    ("pop_ml100k", ["data.max_len=-1"], ["data.max_len"]),
    ("pop_ml100k", ["data.max_len=0"], ["data.max_len"]),
    ("pop_ml100k", ["data.num_workers=-1"], ["data.num_workers"]),
    ("pop_ml100k", ["trainer.accumulate_grad_batches=0"], ["trainer.accumulate_grad_batches"]),
    ("pop_ml100k", ["eval.item_chunk_size=-1"], ["eval.item_chunk_size"]),
    ("sasrec_ml100k", ["model.dropout=1.5"], ["model.dropout", "[0, 1)"]),
    ("sasrec_ml100k", ["model.attn_dropout=-0.1"], ["model.attn_dropout"]),
    ("sasrec_ml100k", ["model.hidden_size=0"], ["model.hidden_size"]),
    ("tiger_ml100k", ["model.dropout=1.0"], ["model.dropout"]),
    ("pop_ml100k", ["trainer.monitor=val/auc"], ["trainer.monitor", "val/auc"]),  # a ranking model
    ("pop_ml100k", ["trainer.monitor=val/ndcg@7"], ["trainer.monitor"]),  # 7 is not in eval.ks
    ("fm_ml100k", ["trainer.monitor=val/ndcg@10"], ["trainer.monitor"]),  # a CTR model
    ("pop_ml100k", ["model.name=this:x"], ["refusing to import", "'this'"]),  # stdlib: not imported
    ("pop_ml100k", ["model.name=os:system"], ["refusing to import", "'os'"]),
    ("pop_ml100k", ["model.name=zoo.run:main"], ["not a RecModel subclass"]),
]
if NO_GPU:
    CONFIG_ROWS += [
        ("pop_ml100k", ["trainer.preset=ddp"], ["no", "GPU", "trainer.preset=cpu or ddp_cpu"]),
        ("pop_ml100k", ["trainer.preset=fsdp"], ["GPU", "trainer.preset=cpu or ddp_cpu"]),
        ("pop_ml100k", ["trainer.accelerator=gpu"], ["GPU", "trainer.preset=cpu or ddp_cpu"]),
    ]


@pytest.mark.parametrize("recipe, overrides, needles", CONFIG_ROWS, ids=[" ".join(r[1]) for r in CONFIG_ROWS])
def test_config_fault(recipe, overrides, needles, run_root, capsys):
    imported_this = "this" in sys.modules
    code, err = cli([f"recipe={recipe}", f"run_root={run_root}", *overrides], capsys)
    assert code == 2, err
    assert_one_line(err, *needles)
    assert not run_root.exists()  # refused before the run directory (or its parent) was made
    assert ("this" in sys.modules) == imported_this  # the refused module was never imported


def test_valid_edge_values_still_compose():
    """The checks refuse nonsense, not the edges Lightning gives a meaning to."""
    cfg = compose(
        "sasrec_ml100k",
        [
            "trainer.max_epochs=-1",
            "trainer.max_steps=10",  # infinite epochs bounded by steps
            "trainer.limit_val_batches=0",  # no validation
            "trainer.limit_train_batches=0.5",
            "trainer.precision=bf16-mixed",
            "trainer.max_time=00:01:30:00",
            "model.dropout=0",
            "trainer.monitor=val/hr@20",
            "eval.item_chunk_size=0",
        ],
    )
    assert cfg.trainer.max_epochs == -1
    assert compose("fm_ml100k", ["trainer.monitor=val/logloss"]).trainer.monitor == "val/logloss"
    assert compose("tiger_ml100k", ["trainer.monitor=val/invalid_rate"]).trainer.monitor == "val/invalid_rate"
    assert compose("pop_ml100k", ["trainer.monitor=train/loss"]).trainer.monitor == "train/loss"


def recipe_file(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_duplicate_yaml_key_names_key_and_file(tmp_path, run_root, capsys):
    path = recipe_file(
        tmp_path / "dup.yaml", "base: [_base/default]\nmodel: {name: pop}\nloss: {name: ce}\nseed: 1\nseed: 2\n"
    )
    code, err = cli([f"recipe={path}", f"run_root={run_root}"], capsys)
    assert code == 2
    assert_one_line(err, "duplicate key 'seed'", str(path))
    assert not run_root.exists()


def test_unwritable_run_root(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, err = cli(["recipe=pop_ml100k", f"run_root={blocker}/runs"], capsys)
    assert code == 2
    assert_one_line(err, "run_root", "not a directory")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
        code, err = cli(["recipe=pop_ml100k", f"run_root={locked}/runs"], capsys)
        assert code == 2
        assert_one_line(err, "run_root", "not writable")


@pytest.mark.parametrize("given", ["absolute", "relative"])
def test_recipe_path_outside_the_recipes_folder_stays_under_run_root(given, tmp_path, monkeypatch):
    """The run directory is <run_root>/<sanitised stem>/..., whatever path the recipe was given by."""
    path = recipe_file(tmp_path / "x y.yaml", "base: [_base/default]\nmodel: {name: pop}\nloss: {name: ce}\n")
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    name = str(path) if given == "absolute" else "../../x y"
    cfg = compose(name, [f"run_root={tmp_path / 'runs'}"])
    assert cfg.recipe == "x_y"
    run_dir = zoo.run.resolve_run_dir(cfg)
    assert run_dir.resolve().is_relative_to((tmp_path / "runs").resolve())
    assert run_dir.parent.name == "x_y"


def test_runs_started_in_the_same_second_get_their_own_directories(tmp_path, monkeypatch):
    """``claim_run_dir`` (the default run directory and every benchmark's) never hands one directory to two runs:
    two benchmark jobs launched together once shared one and wrote over each other's checkpoints."""
    from datetime import datetime

    class Frozen(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime(2026, 12, 3, 17, 24, 58)

    monkeypatch.setattr(zoo.run, "datetime", Frozen)
    first, second, third = (zoo.run.claim_run_dir(tmp_path / "runs" / "r") for _ in range(3))
    assert [first.name, second.name, third.name] == ["20261203-172458", "20261203-172458-1", "20261203-172458-2"]
    assert all(d.is_dir() for d in (first, second, third))


def test_recipe_named_by_a_directory(tmp_path, capsys):
    (tmp_path / "r.yaml").mkdir()
    code, err = cli([f"recipe={tmp_path / 'r.yaml'}"], capsys)
    assert code == 2
    assert_one_line(err, "is a directory, expected a YAML file")


# -- data faults: one line, exit 1 ------------------------------------------------------------------------------
def seqfile(tmp_path: Path, text: str, name: str = "s.txt") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def atomic(tmp_path: Path, header: str, rows: list[str]) -> Path:
    folder = tmp_path / "ds"
    folder.mkdir(exist_ok=True)
    (folder / "ds.inter").write_text("\n".join([header, *rows]) + "\n")
    return folder


GOOD_SEQUENCES = "".join(f"{u} {' '.join(str((u + t) % 6 + 1) for t in range(6))}\n" for u in range(1, 9))


def _dir_as_file(tmp_path):
    (tmp_path / "adir").mkdir()
    return ["data.name=seqfile", f"data.path={tmp_path / 'adir'}"], ["is a directory, expected a file"]


def _overflow(tmp_path):
    path = seqfile(tmp_path, "1 1 2 3 4\n2 1 99999999999999999999999 3 4\n")
    return ["data.name=seqfile", f"data.path={path}"], [f"{path}:2", "64-bit"]


def _date_timestamps(tmp_path):
    rows = [f"u{u}\ti{i}\t2020-01-0{i}" for u in range(3) for i in range(1, 6)]
    folder = atomic(tmp_path, "user_id:token\titem_id:token\ttimestamp:token", rows)
    return ["data.name=atomic", f"data.path={folder}"], ["ds.inter:2", "timestamp", "2020-01-01"]


def _non_string_titles(tmp_path):
    path = seqfile(tmp_path, GOOD_SEQUENCES)
    titles = tmp_path / "t.json"
    titles.write_text(json.dumps({"1": "one", "2": ["not", "a", "title"]}))
    return ["data.name=seqfile", f"data.path={path}", f"data.titles={titles}"], ["item 2", "list title"]


def _sparse_ids(tmp_path):
    path = seqfile(tmp_path, "1 1 2 3 4\n2 2 3 4 200000\n3 1 3 4 2\n")
    return ["data.name=seqfile", f"data.path={path}"], ["sparse", "200000", "5 distinct"]


def _empty_training_split(tmp_path):
    rows = [f"u{u}\ti{i}\t{i}" for u in range(4) for i in range(1, 4)]  # 3 items each: nothing to train on
    folder = atomic(tmp_path, "user_id:token\titem_id:token\ttimestamp:float", rows)
    return ["data.name=atomic", f"data.path={folder}"], ["training split is empty"]


def _missing_atomic(tmp_path):
    return ["data.name=atomic", f"data.path={tmp_path / 'nothing'}"], ["missing atomic file"]


DATA_ROWS = {
    "directory given as a data file": _dir_as_file,
    "item id overflowing int64": _overflow,
    "date strings in timestamp:token": _date_timestamps,
    "non-string titles": _non_string_titles,
    "largest id 200000 for 5 items": _sparse_ids,
    "atomic dataset with an empty training split": _empty_training_split,
    "missing atomic file": _missing_atomic,
}


@pytest.mark.parametrize("row", list(DATA_ROWS))
def test_data_fault(row, tmp_path, run_root, capsys):
    if row == "atomic dataset with an empty training split" and not TRAIN_CHECKED:
        pytest.xfail("zoo/data/datamodule.py does not yet call zoo.data.loading.check_training_split")
    overrides, needles = DATA_ROWS[row](tmp_path)
    recipe = "sasrec_ml100k" if "training split" in row else "pop_ml100k"  # pop trains nothing: no training split
    code, err = cli([f"recipe={recipe}", f"run_root={run_root}", *overrides, *SHRINK], capsys)
    assert code == 1, err
    assert_one_line(err, *needles)
    if not HOOKED:
        pytest.xfail("zoo/run.py does not yet call zoo.io.discard_failed_run_dir on a failed run")
    assert run_dirs(run_root) == []


def test_utf8_bom_is_stripped(tmp_path):
    path = seqfile(tmp_path, "\ufeff" + GOOD_SEQUENCES)
    corpus = load_corpus(compose("pop_ml100k", ["data.name=seqfile", f"data.path={path}"]).data)
    assert corpus.user_ids[0] == "1"
    folder = atomic(tmp_path, "\ufeffuser_id:token\titem_id:token", [f"u{u}\ti{i}" for u in range(3) for i in range(5)])
    corpus = load_corpus(compose("pop_ml100k", ["data.name=atomic", f"data.path={folder}"]).data)
    assert corpus.num_items == 5
    titles = tmp_path / "t.json"
    titles.write_text("\ufeff" + json.dumps({"1": "one"}), encoding="utf-8")
    cfg = compose("pop_ml100k", ["data.name=seqfile", f"data.path={path}", f"data.titles={titles}"])
    assert load_corpus(cfg.data).title(1) == "one"


def test_short_users_are_counted_in_a_warning(tmp_path, caplog):
    path = seqfile(tmp_path, GOOD_SEQUENCES + "99 3\n")  # user 99 has one item: it cannot be evaluated
    with caplog.at_level(logging.WARNING):
        load_corpus(compose("pop_ml100k", ["data.name=seqfile", f"data.path={path}"]).data)
    assert "1 of 9 users have fewer than 3 interactions" in caplog.text


# -- caches --------------------------------------------------------------------------------------------------------
def seq_data(path: Path):
    return compose("pop_ml100k", ["data.name=seqfile", f"data.path={path}"]).data


@pytest.mark.parametrize("damage", ["zero bytes", "truncated"])
def test_unreadable_cache_is_a_miss_and_is_overwritten(damage, tmp_path, caplog):
    path = seqfile(tmp_path, GOOD_SEQUENCES)
    load_corpus(seq_data(path))
    (entry,) = cache_dir(seq_data(path)).glob("seqfile-*.npz")
    entry.write_bytes(b"" if damage == "zero bytes" else entry.read_bytes()[: entry.stat().st_size // 2])
    for _ in range(2):  # every later run works, not only the first
        with caplog.at_level(logging.WARNING):
            assert load_corpus(seq_data(path)).num_users == 8
    assert "ignoring the corpus cache" in caplog.text
    assert load_cached_corpus(entry).num_users == 8  # rebuilt and overwritten


def test_cache_content_must_belong_to_the_corpus(tmp_path, caplog):
    a = seqfile(tmp_path, GOOD_SEQUENCES, "a.txt")
    b = seqfile(tmp_path, "1 1 2 3 4 5\n2 2 3 4 5 1\n", "b.txt")
    load_corpus(seq_data(a))
    (entry_a,) = cache_dir(seq_data(a)).glob("seqfile-*.npz")
    with caplog.at_level(logging.WARNING):
        load_corpus(seq_data(a))
    assert "ignoring the corpus cache" not in caplog.text  # its own entry is a hit
    assert load_cached_corpus(entry_a, key=cache_key(seq_data(a), "seqfile", [a])).num_users == 8
    entry_b = cache_path(seq_data(b), "seqfile", [b])
    entry_b.write_bytes(entry_a.read_bytes())  # a's corpus under b's name
    assert load_corpus(seq_data(b)).num_users == 2  # a miss: rebuilt from b
    key = cache_key(seq_data(b), "seqfile", [b])
    with pytest.raises(DataError, match="holds the corpus of key"):
        load_cached_corpus(entry_a, key=key)


def test_same_size_same_mtime_edit_is_a_new_entry(tmp_path):
    path = seqfile(tmp_path, "1 1 2 3 4\n2 2 3 4 1\n")
    before = path.stat()
    assert load_corpus(seq_data(path)).sequence(0).tolist() == [1, 2, 3, 4]
    path.write_text("1 4 3 2 1\n2 2 3 4 1\n")  # same size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # same mtime (cp -p, coarse clocks)
    assert load_corpus(seq_data(path)).sequence(0).tolist() == [4, 3, 2, 1]


def test_atomic_files_get_the_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "f.txt", "x")
        assert stat.S_IMODE((tmp_path / "f.txt").stat().st_mode) == 0o644
        os.umask(0o027)
        write_text_atomic(tmp_path / "g.txt", "x")
        assert stat.S_IMODE((tmp_path / "g.txt").stat().st_mode) == 0o640
    finally:
        os.umask(old)


def test_offline_download_leaves_no_lock(tmp_path):
    dest = tmp_path / "raw" / "f.bin"
    with pytest.raises(DataError, match="cannot download"):
        fetch(RemoteFile("http://127.0.0.1:9/nothing.bin"), dest, timeout=2, progress=False)
    assert list(dest.parent.iterdir()) == []


# -- security --------------------------------------------------------------------------------------------------
class Boom:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_benchmark_checkpoint_is_loaded_weights_only(tmp_path, run_root, capsys):
    from benchmarks.tiger_beam import load_checkpoint

    evil = tmp_path / "evil.ckpt"
    with open(evil, "wb") as f:
        pickle.dump({"state_dict": {}, "x": Boom()}, f)
    with pytest.raises(DataError, match="weights_only=True"):
        load_checkpoint(evil)
    # a real checkpoint of the zoo (config saved as a plain container) loads with weights_only=True
    recipe = REPO / "tests" / "plugins" / "last_item_ml100k.yaml"
    code, err = cli([f"recipe={recipe}", f"run_root={run_root}", *SHRINK], capsys)
    assert code == 0, err
    (ckpt,) = run_root.glob("*/*/checkpoints/last.ckpt")
    state = load_checkpoint(ckpt)
    assert "state_dict" in state and isinstance(state["hyper_parameters"]["config"], dict)


def test_import_paths_allow_only_the_zoo_plugins_and_listed_modules(monkeypatch):
    from zoo.registry import MODELS, import_allowed

    assert import_allowed("zoo.models.sasrec") and import_allowed("tests.plugins.last_item")  # project code
    assert not import_allowed("os") and not import_allowed("subprocess") and not import_allowed("numpy")
    monkeypatch.setenv("ZOO_ALLOW_IMPORTS", "numpy,json")
    assert import_allowed("numpy.linalg") and import_allowed("json")
    with pytest.raises(ConfigError, match="not a RecModel subclass"):
        MODELS.get("json:dumps")  # listed, but not a model
    assert np is not None
