"""Registry-driven: every registered method trains (if it trains) and tests end to end through ``zoo.run`` on its
recipe, shrunk to a few batches. A new method is covered as soon as it is registered and ships a recipe.

A method shrinks itself further for this test with a class attribute ``test_overrides`` (dotted overrides, e.g. a
tiny backbone or fewer RQ-VAE epochs)."""

from __future__ import annotations

import math

import pytest
import yaml
from conftest import SHARED_DATASETS, SHRINK

from zoo.config import RECIPES_DIR, compose, load_recipe, recipe_names
from zoo.registry import MODELS, populate
from zoo.run import run
from zoo.tasks import task_of

populate()


def recipe_for(model_name: str) -> str | None:
    """The model's MovieLens-100K recipe if it has one, else its first recipe (sorted)."""
    mine = [n for n in recipe_names() if (load_recipe(n).get("model") or {}).get("name") == model_name]
    preferred = [n for n in mine if n.endswith("_ml100k")]
    return (preferred or mine or [None])[0]


@pytest.mark.parametrize("model_name", MODELS.names())
def test_every_method_runs_end_to_end(model_name, run_root):
    recipe = recipe_for(model_name)
    assert recipe is not None, f"model '{model_name}' has no recipe in {RECIPES_DIR}"
    data_name = load_recipe(recipe).get("data", {}).get("name", "ml100k")
    if data_name not in ("ml100k", "atomic") and not SHARED_DATASETS.is_dir():
        pytest.skip(f"{recipe} needs {data_name} data")
    overrides = [*SHRINK, f"run_root={run_root}", *getattr(MODELS.get(model_name), "test_overrides", ())]
    metrics = run(compose(recipe, overrides))
    assert metrics, f"{recipe} produced no metrics"
    assert all(math.isfinite(v) for v in metrics.values())
    (run_dir,) = list(run_root.glob(f"{recipe}/*"))
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["model"]["name"] == model_name
    assert (run_dir / "metrics.json").is_file()


GENERATIVE = [n for n in MODELS.names() if task_of(MODELS.get(n)).name == "generative"]


@pytest.mark.parametrize("model_name", GENERATIVE)
def test_every_generative_method_renormalises_its_beams_when_asked(model_name, run_root, monkeypatch):
    """``eval.renormalize=true`` reaches every constrained beam-search step of validation and test (scores over the
    trie's allowed tokens, ``zoo.modules.beam_search``); the metrics stay finite."""
    import inspect

    from zoo.modules import beam_search

    seen: list[bool] = []
    step = beam_search._constrained_step
    signature = inspect.signature(step)

    def spy(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        seen.append(bool(bound.arguments["renormalize"]))
        return step(*args, **kwargs)

    monkeypatch.setattr(beam_search, "_constrained_step", spy)
    recipe = recipe_for(model_name)
    data_name = load_recipe(recipe).get("data", {}).get("name", "ml100k")
    if data_name not in ("ml100k", "atomic") and not SHARED_DATASETS.is_dir():
        pytest.skip(f"{recipe} needs {data_name} data")
    extra = ["trainer.limit_train_batches=1", "eval.renormalize=true", f"run_root={run_root}"]
    metrics = run(compose(recipe, [*SHRINK, *extra, *getattr(MODELS.get(model_name), "test_overrides", ())]))
    assert seen and all(seen), f"{model_name}: {len(seen)} beam steps, renormalised: {sum(seen)}"
    assert all(math.isfinite(v) for v in metrics.values())
