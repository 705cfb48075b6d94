"""Every shipped recipe parses and validates against the schema (a new recipe is covered automatically)."""

import pytest

from zoo.config import RECIPES_DIR, compose, load_recipe, recipe_names
from zoo.errors import ConfigError
from zoo.registry import MODELS, SOURCES


@pytest.mark.parametrize("name", recipe_names())
def test_recipe_composes(name):
    cfg = compose(name)
    assert cfg.recipe == name
    assert cfg.model.name in MODELS or ":" in cfg.model.name
    assert cfg.data.name in SOURCES


def test_base_inheritance_and_override_order(tmp_path, monkeypatch):
    (tmp_path / "_base").mkdir()
    (tmp_path / "_base" / "a.yaml").write_text("seed: 1\ndata: {max_len: 7}\n")
    (tmp_path / "r.yaml").write_text("base: [_base/a]\nseed: 2\nmodel: {name: pop}\nloss: {name: ce}\n")
    monkeypatch.setattr("zoo.config.RECIPES_DIR", tmp_path)
    raw = load_recipe("r")
    assert raw["seed"] == 2 and raw["data"]["max_len"] == 7
    cfg = compose("r", ["data.max_len=9"])
    assert cfg.seed == 2 and cfg.data.max_len == 9 and cfg.data.batch_size == 256


def test_inheritance_cycle_is_reported(tmp_path, monkeypatch):
    (tmp_path / "a.yaml").write_text("base: [b]\n")
    (tmp_path / "b.yaml").write_text("base: [a]\n")
    monkeypatch.setattr("zoo.config.RECIPES_DIR", tmp_path)
    with pytest.raises(ConfigError, match="cycle"):
        load_recipe("a")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["trainer.max_epoch=3"], "unknown key 'trainer.max_epoch'; nearest: max_epochs"),
        (["trainer.max_epochs=abc"], "wrong type for 'trainer.max_epochs'"),
        (["model.foo=1"], "unknown key 'model.foo'"),
        (["model.name=sasrek"], "unknown model 'sasrek'"),
        (["data.name=nope"], "unknown dataset 'nope'"),
        (["trainer.preset=gpu"], "invalid trainer.preset='gpu'"),
        (["logger.name=mlflow"], "invalid logger.name='mlflow'"),
        # null (the task family's default) is valid too; the message lists max, min first
        (["trainer.monitor_mode=maximum"], "invalid trainer.monitor_mode='maximum'; valid: max, min"),
        (["loss.name=nope"], "unknown loss 'nope'"),
        (["bogus"], "must look like dotted.key=value"),
        (["seed=1.5"], "wrong type for 'seed'"),
    ],
)
def test_bad_overrides(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        compose("pop_ml100k", overrides)


def test_monitor_defaults_come_from_the_task_family():
    """trainer.monitor / monitor_mode left null are filled by the builder from the model's family (recorded as
    applied in the config); explicit values are kept."""
    from conftest import build_on

    assert compose("pop_ml100k").trainer.monitor is None and compose("pop_ml100k").trainer.monitor_mode is None
    model, _ = build_on("pop_ml100k")
    assert (model.cfg.trainer.monitor, model.cfg.trainer.monitor_mode) == ("val/ndcg@10", "max")
    model, _ = build_on("fm_ml100k")
    assert (model.cfg.trainer.monitor, model.cfg.trainer.monitor_mode) == ("val/auc", "max")
    model, _ = build_on("pop_ml100k", ["trainer.monitor=val/recall@5", "trainer.monitor_mode=min"])
    assert (model.cfg.trainer.monitor, model.cfg.trainer.monitor_mode) == ("val/recall@5", "min")


def test_recipes_dir_has_no_import_paths():
    """Contract 3: recipes name registered components, never `_target_` import paths."""
    for path in RECIPES_DIR.rglob("*.yaml"):
        assert "_target_" not in path.read_text(), path


def test_recipe_files_list_the_base_chain_once_in_merge_order():
    from zoo.config import recipe_files

    assert [f.name for f in recipe_files("p5_cid_beauty")] == ["default.yaml", "p5.yaml", "p5_cid_beauty.yaml"]
