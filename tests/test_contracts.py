"""Contract tests driven by the registry (the way timm and torchtune test every model): every registered method,
built through ``zoo.build`` from its recipe on the one shared synthetic corpus, must

* give every trainable parameter a gradient and no frozen one after a training step;
* reproduce its test metrics exactly when its best checkpoint is saved and reloaded into a freshly built model;
* (generative) return ranked lists of item ids in 0..N (0 = empty slot) with a real item first;
* (item losses) score through ``score_state`` exactly what the loss scores through ``score_all``, in chunks too;
* match its pinned loss for a fixed seed (``tests/pinned_losses.json``; a new method adds its value there).

A new method is covered as soon as it is registered and ships a recipe; ``test_overrides`` shrinks it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import SHRINK, recipe_for, synthetic_corpus

from zoo.build import build
from zoo.config import compose
from zoo.registry import MODELS, populate
from zoo.run import run
from zoo.trainer import build_trainer

populate()
PINNED = Path(__file__).with_name("pinned_losses.json")
RECOMMENDERS = [n for n in MODELS.names() if not getattr(MODELS.get(n), "standalone", False)]


def config(model_name: str, tmp_path: Path, *extra: str):
    recipe = recipe_for(model_name)
    assert recipe is not None, f"model '{model_name}' has no recipe"
    cls = MODELS.get(model_name)
    return compose(recipe, [*SHRINK, f"run_root={tmp_path}", "logger.name=none", *cls.test_overrides, *extra])


def built(model_name: str, tmp_path: Path, *extra: str):
    L.seed_everything(0, verbose=False)
    cfg = config(model_name, tmp_path, "seed=0", *extra)
    return build(cfg, corpus=synthetic_corpus())


def first_batch(datamodule, split: str = "train") -> dict:
    loader = {"train": datamodule.train_dataloader, "test": datamodule.test_dataloader}[split]()
    return next(iter(loader))


@pytest.mark.parametrize("model_name", RECOMMENDERS)
def test_a_training_step_reaches_every_trainable_parameter_and_no_frozen_one(model_name, tmp_path):
    model, datamodule = built(model_name, tmp_path)
    if not model.trainable:
        pytest.skip(f"{model_name} trains nothing")
    model.train()
    model.compute_loss(first_batch(datamodule)).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad and p.grad is not None]
    assert not missing, f"{model_name}: trainable parameters without a gradient: {missing[:5]}"
    assert not frozen, f"{model_name}: frozen parameters with a gradient: {frozen[:5]}"
    assert any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("model_name", RECOMMENDERS)
def test_the_best_checkpoint_reloads_to_identical_test_metrics(model_name, tmp_path, one_thread):
    cfg = config(model_name, tmp_path, "trainer.limit_test_batches=2")
    corpus = synthetic_corpus()
    metrics = run(cfg, corpus=corpus)
    (run_dir,) = (tmp_path / cfg.recipe).iterdir()
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    fresh_cfg = config(model_name, tmp_path, "trainer.limit_test_batches=2")
    model, datamodule = build(fresh_cfg, corpus=corpus)
    trainer = build_trainer(fresh_cfg, model, tmp_path / "reload")
    trainer.test(model, datamodule=datamodule, ckpt_path=str(ckpt) if ckpt.is_file() else None, verbose=False)
    tested = {k: v for k, v in metrics.items() if k.startswith("test/")}
    assert tested and model.test_results.keys() >= tested.keys()
    for key, value in tested.items():
        assert model.test_results[key] == pytest.approx(value, abs=1e-9), key


@pytest.mark.parametrize("model_name", [n for n in RECOMMENDERS if MODELS.get(n).task == "generative"])
def test_generative_lists_hold_only_item_ids(model_name, tmp_path):
    model, datamodule = built(model_name, tmp_path)
    model.eval()
    batch = first_batch(datamodule, "test")
    with torch.no_grad():
        ranked = model.rank(batch, 5, candidates=batch.get("candidates"))
    assert ranked.shape == (len(batch["target"]), 5)
    assert ranked.dtype == torch.long
    assert int(ranked.min()) >= 0 and int(ranked.max()) <= model.num_items
    assert bool((ranked[:, 0] > 0).all()), "constrained decoding must produce a real item first"


@pytest.mark.parametrize("model_name", [n for n in RECOMMENDERS if MODELS.get(n).loss_kind == "item"])
def test_score_state_scores_what_the_loss_scores(model_name, tmp_path):
    model, datamodule = built(model_name, tmp_path)
    model.eval()
    batch = first_batch(datamodule, "test")
    with torch.no_grad():
        state = model.user_state(batch)
        full = model.score_state(state, 0, model.num_items + 1)
        assert torch.allclose(full, model.score_all(state), atol=1e-6)
        chunks = torch.cat(
            [model.score_state(state, s, min(s + 5, model.num_items + 1)) for s in range(0, model.num_items + 1, 5)],
            dim=1,
        )
        assert torch.allclose(chunks, full, atol=1e-6)
        picks = torch.randint(1, model.num_items + 1, (len(state), 4))
        assert torch.allclose(model.score_items(state, picks), full.gather(1, picks), atol=1e-5)


def pinned() -> dict[str, float]:
    return json.loads(PINNED.read_text()) if PINNED.is_file() else {}


@pytest.mark.parametrize("model_name", RECOMMENDERS)
def test_pinned_loss_for_a_fixed_seed(model_name, tmp_path, one_thread):
    model, datamodule = built(model_name, tmp_path)
    if model.loss is None:
        pytest.skip(f"{model_name} has no loss")
    torch.manual_seed(0)
    model.train()
    with torch.no_grad():
        loss = float(model.compute_loss(first_batch(datamodule)))
    assert math.isfinite(loss)
    values = pinned()
    assert model_name in values, f'add "{model_name}": {loss!r} to {PINNED.name} (a new method pins its loss)'
    assert loss == pytest.approx(values[model_name], rel=1e-4), f"{model_name}: loss {loss!r} changed"


@pytest.mark.parametrize("model_name", [n for n in RECOMMENDERS if MODELS.get(n).task == "generative"])
def test_generative_methods_rank_only_the_candidates_or_refuse(model_name, tmp_path):
    from zoo.errors import ConfigError

    try:
        model, datamodule = built(model_name, tmp_path, "data.eval_candidates=3", "eval.mask_seen=true")
    except ConfigError as err:  # a method may refuse the protocol, in one line
        assert "\n" not in str(err)
        pytest.skip(f"{model_name} refuses sampled candidates: {err}")
    model.eval()
    batch = first_batch(datamodule, "test")
    with torch.no_grad():
        ranked = model.rank(batch, 3, candidates=batch["candidates"])
        ranks = model.eval_ranks(batch)
    inside = (ranked[:, :, None] == batch["candidates"][:, None, :]).any(dim=2) | (ranked == 0)
    assert bool(inside.all()), f"{model_name} ranked items outside the candidate lists"
    assert bool((ranked[:, 0] > 0).all())
    assert int(ranks.min()) >= 0
