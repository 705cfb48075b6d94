"""Stage artifacts: built once under a key of (stage, version, corpus, inputs, upstream keys), reused when
complete, rebuilt when an input changes, never left half-written; PALR runs from nothing in one command (it
trains, or reuses, its SASRec retriever stage)."""

from __future__ import annotations

import json

import pytest
from conftest import SHRINK, synthetic_corpus

from zoo.config import compose
from zoo.run import run
from zoo.stages import STAGES, Stage, corpus_fingerprint, resolve

BUILDS: list[str] = []


@STAGES.register("_test_counter")
class CounterStage(Stage):
    """Writes the number of items times ``model.factor_dim``; fails on demand."""

    name = "_test_counter"

    def inputs(self, cfg, corpus):
        return {"factor": int(cfg.model.factor_dim)}

    def build(self, cfg, corpus, out, upstream):
        BUILDS.append(str(out))
        (out / "value.txt").write_text(str(corpus.num_items * cfg.model.factor_dim))
        if cfg.model.factor_dim == 13:
            raise RuntimeError("interrupted")
        return {"value": corpus.num_items * cfg.model.factor_dim}


@STAGES.register("_test_child")
class ChildStage(Stage):
    name = "_test_child"
    needs = ("_test_counter",)

    def inputs(self, cfg, corpus):
        return {}

    def build(self, cfg, corpus, out, upstream):
        (out / "double.txt").write_text(str(2 * int(upstream["_test_counter"].file("value.txt").read_text())))
        return {}


def cfg_for(tmp_path, factor: int = 4):
    return compose("fm_ml100k", [f"data.cache_dir={tmp_path / 'cache'}", f"model.factor_dim={factor}"])


def test_built_once_then_reused(tmp_path):
    BUILDS.clear()
    corpus = synthetic_corpus()
    first = resolve("_test_counter", cfg_for(tmp_path), corpus)
    second = resolve("_test_counter", cfg_for(tmp_path), corpus)
    assert not first.reused and second.reused and len(BUILDS) == 1
    assert first.path == second.path and first.path.parent == tmp_path / "cache" / "stages" / "_test_counter"
    assert first.file("value.txt").read_text() == str(corpus.num_items * 4)
    manifest = json.loads(first.file("manifest.json").read_text())
    assert manifest["inputs"] == {"factor": 4} and manifest["metrics"] == {"value": corpus.num_items * 4}
    rebuilt = resolve("_test_counter", cfg_for(tmp_path), corpus, rebuild=True)
    assert not rebuilt.reused and len(BUILDS) == 2 and rebuilt.path == first.path


def test_a_changed_input_or_corpus_gives_another_key(tmp_path):
    corpus = synthetic_corpus()
    base = resolve("_test_counter", cfg_for(tmp_path), corpus)
    other_input = resolve("_test_counter", cfg_for(tmp_path, factor=5), corpus)
    other_data = resolve("_test_counter", cfg_for(tmp_path), synthetic_corpus(seed=3))
    assert len({base.key, other_input.key, other_data.key}) == 3
    assert corpus_fingerprint(synthetic_corpus()) == corpus_fingerprint(corpus)
    changed = synthetic_corpus()
    changed.item_text["title"][1] = "another title"
    assert corpus_fingerprint(changed) != corpus_fingerprint(corpus)


def test_an_interrupted_build_leaves_nothing_behind(tmp_path):
    corpus = synthetic_corpus()
    with pytest.raises(RuntimeError, match="interrupted"):
        resolve("_test_counter", cfg_for(tmp_path, factor=13), corpus)
    root = tmp_path / "cache" / "stages" / "_test_counter"
    assert list(root.iterdir()) == []


def test_upstream_stages_resolve_first_and_key_the_child(tmp_path):
    corpus = synthetic_corpus()
    resolved = {}
    child = resolve("_test_child", cfg_for(tmp_path), corpus, resolved=resolved)
    assert set(resolved) == {"_test_counter", "_test_child"}
    assert child.file("double.txt").read_text() == str(2 * corpus.num_items * 4)
    other = resolve("_test_child", cfg_for(tmp_path, factor=5), corpus)
    assert other.key != child.key  # the upstream key is part of the child's


def test_palr_runs_from_nothing_then_reuses_its_retriever_stage(tmp_path, capsys):
    corpus = synthetic_corpus(num_items=30, users=40)
    overrides = [
        *SHRINK,
        f"run_root={tmp_path / 'runs'}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "logger.name=none",
        "model.backbone=tiny-llama",
        "model.num_candidates=10",
        "model.retriever_k=10",
        "model.retriever_overrides=[trainer.max_epochs=1,trainer.limit_val_batches=1,data.batch_size=16]",
    ]
    first = run(compose("palr_ml100k", overrides), corpus=corpus)
    assert first["stage/retriever/reused"] == 0.0
    assert "stage retriever: built" in capsys.readouterr().err
    second = run(compose("palr_ml100k", overrides), corpus=corpus)
    assert second["stage/retriever/reused"] == 1.0
    assert "stage retriever: reused" in capsys.readouterr().err
    for run_dir in (tmp_path / "runs" / "palr_ml100k").iterdir():
        stages = json.loads((run_dir / "stages.json").read_text())
        config = (run_dir / "config.yaml").read_text()
        assert stages["retriever"]["path"] in config  # the candidates the run applied are recorded
    retriever = next((tmp_path / "cache" / "stages" / "retriever").iterdir())
    assert (retriever / "candidates.npz").is_file() and (retriever / "run" / "checkpoints" / "best.ckpt").is_file()


def test_a_damaged_artifact_is_rebuilt_not_reused(tmp_path, capsys):
    BUILDS.clear()
    corpus = synthetic_corpus()
    first = resolve("_test_counter", cfg_for(tmp_path), corpus)
    first.file("value.txt").write_text("99")  # same size, content changed behind the cache's back
    second = resolve("_test_counter", cfg_for(tmp_path), corpus)
    assert not second.reused and len(BUILDS) == 2
    assert second.file("value.txt").read_text() == str(corpus.num_items * 4)
    assert "is damaged (value.txt changed since it was built): rebuilding it" in capsys.readouterr().err
    second.file("value.txt").unlink()
    third = resolve("_test_counter", cfg_for(tmp_path), corpus)
    assert not third.reused and len(BUILDS) == 3
    assert resolve("_test_counter", cfg_for(tmp_path), corpus).reused
