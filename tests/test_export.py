"""``zoo.export``: a Hugging Face-style folder (safetensors, config, item map, model card, peft adapter for LoRA
runs) that ``zoo.load`` reads back with identical test metrics; push_to_hub offline fails in one line."""

from __future__ import annotations

import json

import pytest
from conftest import SHRINK, synthetic_corpus

from zoo.config import compose
from zoo.errors import DataError, ZooError
from zoo.export import export, main
from zoo.inference import load
from zoo.run import run


def trained(recipe: str, root, *extra: str):
    corpus = synthetic_corpus()
    cfg = compose(recipe, [*SHRINK, f"run_root={root}", "logger.name=none", *extra])
    metrics = run(cfg, corpus=corpus)
    (run_dir,) = (root / cfg.recipe).iterdir()
    return run_dir, {k: v for k, v in metrics.items() if k.startswith("test/")}, corpus


@pytest.mark.parametrize(
    "recipe, extra",
    [
        ("sasrec_ml100k", ("model.hidden_size=16",)),
        (
            "tiger_ml100k",
            (
                "model.d_model=32",
                "model.num_heads=2",
                "model.d_kv=16",
                "model.d_ff=64",
                "model.num_encoder_layers=1",
                "model.num_decoder_layers=1",
                "model.text_fields=[title]",
                "model.rqvae.hidden_dims=[64]",
                "model.rqvae.epochs=3",
                "model.rqvae.eval_every=3",
            ),
        ),
    ],
)
def test_export_loads_back_with_identical_test_metrics(recipe, extra, tmp_path, one_thread, monkeypatch):
    run_dir, metrics, corpus = trained(recipe, tmp_path / "runs", *extra)
    out = export(run_dir, tmp_path / "export")
    names = {p.name for p in out.iterdir()}
    assert names >= {"model.safetensors", "zoo_config.yaml", "metrics.json", "inference", "README.md"}
    assert (out / "inference" / "items.json").is_file()
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("ZOO_DATA_DIR", str(tmp_path / "empty"))
    original, exported = load(run_dir), load(out)
    assert exported.info["source"] == "export" and exported.info["metrics"] == original.info["metrics"]
    assert exported.evaluate(corpus=corpus) == metrics  # identical, to the last digit
    history = corpus.item_ids[1:4]
    assert exported.recommend(history, k=3) == original.recommend(history, k=3)
    card = (out / "README.md").read_text()
    for needle in ("test/ndcg@10", "leave-one-out", "full ranking", "git commit", "fingerprint", "ml100k"):
        assert needle in card, needle
    assert exported.info["fingerprint"] in card


def test_export_refuses_a_folder_in_use_and_a_missing_run(tmp_path, one_thread):
    run_dir, _, _ = trained("pop_ml100k", tmp_path / "runs")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("x")
    with pytest.raises(DataError, match="not an empty folder"):
        export(run_dir, tmp_path / "taken")
    with pytest.raises(DataError, match="does not exist"):
        export(tmp_path / "nowhere", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    out = export(run_dir, tmp_path / "pop")  # a model that trains nothing: its state after prepare
    assert load(out).recommend(["1"], k=2) == load(run_dir).recommend(["1"], k=2)


def test_push_to_hub_offline_is_one_line(tmp_path, one_thread, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run_dir, _, _ = trained("pop_ml100k", tmp_path / "runs")
    code = main([str(run_dir), str(tmp_path / "out"), "--push-to-hub", "someone/zoo-pop"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: push_to_hub=someone/zoo-pop failed: ") and err.count("\n") == 1
    assert (tmp_path / "out" / "model.safetensors").is_file()  # the folder itself was written
    with pytest.raises(ZooError, match="push_to_hub=someone/zoo-pop failed"):
        export(run_dir, tmp_path / "out2", push_to_hub="someone/zoo-pop")


def test_cli_export_and_usage(tmp_path, one_thread, capsys):
    run_dir, _, _ = trained("pop_ml100k", tmp_path / "runs")
    assert main([str(run_dir), str(tmp_path / "out")]) == 0
    assert "exported" in capsys.readouterr().out
    assert main([str(run_dir)]) == 2 and capsys.readouterr().err.count("\n") == 1
    assert main(["--help"]) == 0 and "python -m zoo.export" in capsys.readouterr().out


def test_lora_run_exports_a_peft_adapter(tmp_path, one_thread):
    import torch
    from peft import PeftModel

    from zoo.modules.llm import CausalLMBackbone

    extra = ("model.lora_r=2", "model.tiny_hidden=32", "model.max_prompt_tokens=128")
    run_dir, metrics, corpus = trained("llmrec_ml100k", tmp_path / "runs", *extra)
    out = export(run_dir, tmp_path / "export")
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (out / "adapter").iterdir()}
    rec = load(out)
    base_cfg = rec.cfg.model.copy()
    base_cfg.lora_r = 0
    base = CausalLMBackbone(base_cfg).model
    peft = PeftModel.from_pretrained(base, str(out / "adapter"))
    theirs = {k: v for k, v in peft.state_dict().items() if "lora_" in k}
    ours = {k: v for k, v in rec.model.backbone.model.state_dict().items() if "lora_" in k}
    assert theirs and theirs.keys() == ours.keys()
    assert all(torch.equal(theirs[k], ours[k]) for k in ours)
    assert json.loads((out / "metrics.json").read_text())["test/ndcg@10"] == metrics["test/ndcg@10"]
    assert rec.evaluate(corpus=corpus) == metrics
