"""``zoo.load`` and ``recommend``: a run directory alone (no data) gives a ready model; bad requests and bad paths
are one line; Lightning's ``load_from_checkpoint`` works; ``import zoo`` is cheap."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, SHRINK, synthetic_corpus

from zoo.config import compose
from zoo.errors import DataError, RequestError, ZooError
from zoo.inference import load
from zoo.run import run


@pytest.fixture(scope="module")
def sasrec_run(tmp_path_factory):
    import torch

    root = tmp_path_factory.mktemp("runs")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = compose("sasrec_ml100k", [*SHRINK, f"run_root={root}", "logger.name=none", "model.hidden_size=16"])
        run(cfg, corpus=synthetic_corpus())
    finally:
        torch.set_num_threads(threads)
    (run_dir,) = (root / cfg.recipe).iterdir()
    return run_dir


@pytest.fixture
def model(sasrec_run, tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("ZOO_DATA_DIR", str(tmp_path / "empty"))  # nothing to read: the run directory suffices
    return load(sasrec_run)


def test_run_directory_keeps_a_small_inference_bundle(sasrec_run):
    bundle = sasrec_run / "inference"
    assert {p.name for p in bundle.iterdir()} >= {"items.json", "users.json", "counts.npz", "meta.json"}
    items = json.loads((bundle / "items.json").read_text())
    corpus = synthetic_corpus()
    assert items["ids"] == corpus.item_ids and dict(items["text"])["title"] == corpus.item_text["title"]
    assert not (bundle / "interactions.npz").exists()  # SASRec reads no interactions when built
    assert sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file()) < 100_000


def test_recommend_returns_raw_ids_titles_and_scores(model):
    corpus = synthetic_corpus()
    out = model.recommend(["3", "4", "5"], k=4)
    assert len(out) == 4 and [set(r) for r in out] == [{"item", "title", "score"}] * 4
    assert not {r["item"] for r in out} & {"3", "4", "5"}  # exclude_seen by default
    assert all(r["title"] == corpus.title(corpus.item_ids.index(r["item"])) for r in out)
    assert [r["score"] for r in out] == sorted((r["score"] for r in out), reverse=True)
    with_seen = model.recommend(["3", "4", "5"], k=model.num_items, exclude_seen=False)
    assert len(with_seen) == model.num_items and {r["item"] for r in with_seen} == set(corpus.item_ids[1:])
    assert model.catalog.ids == corpus.item_ids and model.catalog.index("7") == 7
    assert model.info["method"] == "sasrec" and model.info["dataset"] == "ml100k"
    assert model.info["metrics"]["test/ndcg@10"] > 0 and model.info["created"]


def test_batched_recommend_equals_one_by_one(model):
    histories = [["1", "2"], ["9"], ["4", "5", "6", "7"]]
    batched = model.recommend(histories, k=3)
    assert len(batched) == 3
    for history, rows in zip(histories, batched):
        single = model.recommend(history, k=3)
        assert [r["item"] for r in rows] == [r["item"] for r in single]
        assert [r["score"] for r in rows] == pytest.approx([r["score"] for r in single], abs=1e-5)


def test_history_is_truncated_like_the_test_loop(model):
    """Only the last data.max_len items count (older ones change nothing when seen items are kept)."""
    max_len = int(model.cfg.data.max_len)
    recent = [str(i % 12 + 1) for i in range(max_len)]
    longer = ["11", "12", "1"] + recent
    a = model.recommend(recent, k=5, exclude_seen=False)
    b = model.recommend(longer, k=5, exclude_seen=False)
    assert [r["item"] for r in a] == [r["item"] for r in b]


@pytest.mark.parametrize(
    "call, needle",
    [
        (lambda m: m.recommend([]), "empty history"),
        (lambda m: m.recommend([["1"], []]), "empty history"),
        (lambda m: m.recommend(["1", "nope", "x1", "x2", "x3", "x4", "x5"]), "6 unknown item ids: 'nope'"),
        (lambda m: m.recommend(["1"], k=0), "k must be an integer in 1..12"),
        (lambda m: m.recommend(["1"], k=13), "k must be an integer in 1..12"),
        (lambda m: m.recommend(["1"], k="3"), "k must be"),
        (lambda m: m.recommend("1 2"), "history must be a list"),
        (lambda m: m.recommend([1.5]), "an item id must be a string"),
        (lambda m: m.recommend([["1"], "2"]), "not a mix"),
        (lambda m: m.recommend(["1"], exclude_seen="yes"), "exclude_seen"),
        (lambda m: m.catalog.index("nope"), "unknown item id 'nope'"),
    ],
)
def test_bad_requests_are_one_line_request_errors(model, call, needle):
    with pytest.raises(RequestError) as err:
        call(model)
    assert needle in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value, ValueError) and err.value.exit_code == 2
    if "unknown item ids" in needle:
        assert "(and 1 more)" in str(err.value)


def test_integer_ids_are_read_as_raw_ids(model):
    assert model.recommend([3, 4], k=2) == model.recommend(["3", "4"], k=2)


def test_load_from_a_checkpoint_and_lightning_load_from_checkpoint(sasrec_run, model):
    from zoo.models.sasrec import SASRec

    ckpt = sasrec_run / "checkpoints" / "best.ckpt"
    by_path = load(ckpt)
    assert by_path.recommend(["1", "2"], k=3) == model.recommend(["1", "2"], k=3)
    lightning = SASRec.load_from_checkpoint(str(ckpt))
    assert isinstance(lightning, SASRec) and not lightning.training
    for key, value in model.model.state_dict().items():
        assert (lightning.state_dict()[key] == value).all(), key
    from zoo.models.pop import MostPopular

    with pytest.raises(ZooError, match="holds a SASRec, not a MostPopular"):
        MostPopular.load_from_checkpoint(str(ckpt))


def test_bad_paths_are_one_line(sasrec_run, tmp_path):
    import shutil

    with pytest.raises(DataError, match="does not exist"):
        load(tmp_path / "nowhere")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DataError, match="neither a run directory"):
        load(tmp_path / "file.txt")
    copy = tmp_path / "copy"
    shutil.copytree(sasrec_run, copy)
    (copy / "checkpoints" / "best.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="truncated or corrupt") as err:
        load(copy)
    assert "\n" not in str(err.value)
    shutil.rmtree(copy / "checkpoints")
    with pytest.raises(DataError, match="no trained weights"):
        load(copy)
    shutil.rmtree(copy / "inference")
    with pytest.raises(DataError, match="inference is missing"):
        load(copy)


def test_pop_is_rebuilt_from_the_saved_counts(tmp_path, one_thread):
    corpus = synthetic_corpus()
    cfg = compose("pop_ml100k", [*SHRINK, f"run_root={tmp_path}", "logger.name=none"])
    metrics = run(cfg, corpus=corpus)
    (run_dir,) = (tmp_path / cfg.recipe).iterdir()
    rec = load(run_dir)
    assert rec.evaluate(corpus=corpus) == pytest.approx({k: v for k, v in metrics.items() if k.startswith("test/")})
    counts = rec.model.test_counts
    top = rec.recommend(["1"], k=3, exclude_seen=False)
    assert [r["score"] for r in top] == sorted(counts[1:].tolist(), reverse=True)[:3]


def test_ctr_models_need_a_known_user(tmp_path, one_thread):
    cfg = compose("fm_ml100k", [*SHRINK, f"run_root={tmp_path}", "logger.name=none", "model.factor_dim=4"])
    run(cfg, corpus=synthetic_corpus())
    (run_dir,) = (tmp_path / cfg.recipe).iterdir()
    rec = load(run_dir)
    with pytest.raises(RequestError, match="pass user="):
        rec.recommend(["1"])
    with pytest.raises(RequestError, match="unknown user id 'nobody'"):
        rec.recommend(["1"], user="nobody")
    out = rec.recommend(["1", "2"], k=4, user="3")
    assert len(out) == 4 and all(0 < r["score"] < 1 for r in out) and not {"1", "2"} & {r["item"] for r in out}


def test_import_zoo_is_cheap():
    code = "import sys, zoo; assert 'torch' not in sys.modules; assert callable(zoo.load); print('ok')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-500:]


def test_zoo_build_and_export_are_callable_even_as_modules():
    import zoo
    import zoo.build
    import zoo.export

    assert callable(zoo.build) and callable(zoo.export) and callable(zoo.load)
    assert Path(zoo.build.__file__).name == "build.py"
