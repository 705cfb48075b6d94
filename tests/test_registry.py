import pytest

from zoo.errors import ConfigError
from zoo.registry import LOSSES, MODELS, SOURCES, Registry, populate


def test_register_get_and_names():
    reg = Registry("widget")

    @reg.register("a")
    class A:
        pass

    reg.register("b", object)
    assert reg.get("a") is A
    assert reg.names() == ["a", "b"] and "a" in reg and len(reg) == 2


def test_duplicate_name_is_an_error():
    reg = Registry("widget")
    reg.register("a", int)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a", float)


def test_unknown_name_suggests_nearest():
    reg = Registry("widget")
    reg.register("sasrec", int)
    reg.register("tiger", float)
    with pytest.raises(ConfigError, match="unknown widget 'sasrek'; nearest: sasrec"):
        reg.get("sasrek")


def test_import_path_lookup():
    reg = Registry("widget")
    assert reg.get("collections:OrderedDict").__name__ == "OrderedDict"
    with pytest.raises(ConfigError, match="cannot import widget"):
        reg.get("collections:Nope")


def test_builtins_registered():
    populate()
    from zoo.stages import STAGES

    assert {"pop", "sasrec", "tiger", "fm"} <= set(MODELS.names()) and "ml100k" in SOURCES
    assert {"ce", "lml", "logloss"} <= set(LOSSES.names())
    for name in LOSSES.names():
        assert LOSSES.get(name).kind in ("item", "token", "ctr")
    assert LOSSES.get("logloss").kind == "ctr" and LOSSES.get("ce").kind == "item"
    assert MODELS.get("fm").task == "ctr" and MODELS.get("fm").loss_kind == "ctr"
    assert {"item_embeddings", "semantic_ids", "retriever"} <= set(STAGES.names())
    assert STAGES.get("semantic_ids").needs == ("item_embeddings",)
