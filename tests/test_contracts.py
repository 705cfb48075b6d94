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


class Killed(Exception):
    """The machine went away: raised in the second epoch, after the first one's checkpoints are written."""


@pytest.mark.parametrize("model_name", RECOMMENDERS)
def test_a_killed_run_resumed_ends_where_an_uninterrupted_run_ends(model_name, tmp_path, one_thread, monkeypatch):
    """Two epochs in one go, or killed after the first epoch and resumed with ``resume=``: the same test metrics,
    exactly (the sampler's epoch, prompt templates and negatives drawn per epoch, optimizer, scheduler and
    best-checkpoint state all resume)."""
    from lightning.pytorch.callbacks import Callback

    import zoo.trainer

    corpus = synthetic_corpus()
    two = ("trainer.max_epochs=2", "trainer.early_stopping_patience=0", "seed=0")
    whole = run(config(model_name, tmp_path / "whole", *two), corpus=corpus)

    class KillAfterFirstEpoch(Callback):  # mid-run: at the second epoch's first batch
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if trainer.current_epoch == 1:
                raise Killed

    real = zoo.trainer.build_trainer

    def killing_trainer(*args, **kwargs):
        trainer = real(*args, **kwargs)
        trainer.callbacks.append(KillAfterFirstEpoch())
        return trainer

    run_dir = tmp_path / "cut"  # named: a run that fails in-process removes the directory it created itself
    cut = config(model_name, tmp_path, *two, f"run_dir={run_dir}")
    monkeypatch.setattr(zoo.trainer, "build_trainer", killing_trainer)
    try:
        run(cut, corpus=corpus)
    except Killed:
        pass
    monkeypatch.setattr(zoo.trainer, "build_trainer", real)
    if not (run_dir / "checkpoints" / "last.ckpt").is_file():
        pytest.skip(f"{model_name} trains nothing: no checkpoint to resume")
    resumed = run(config(model_name, tmp_path, *two, f"run_dir={run_dir}", f"resume={run_dir}"), corpus=corpus)
    tested = {k: v for k, v in whole.items() if k.startswith("test/")}
    assert tested, f"{model_name}: no test metrics"
    assert {k: resumed[k] for k in tested} == tested, f"{model_name}: the resumed run ended elsewhere"


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


def _test_batch(rec, corpus):
    """The first test batch of the real DataModule, as the test loop sees it."""
    from zoo.tasks import task_of

    datamodule = task_of(type(rec.model)).datamodule(rec.cfg, getattr(rec.datamodule, "protocol", None), corpus)
    datamodule.connect(rec.model.data_spec())
    return datamodule, next(iter(datamodule.test_dataloader()))


@pytest.mark.parametrize("model_name", RECOMMENDERS)
def test_load_recommends_the_test_loops_top_k(model_name, tmp_path, one_thread, monkeypatch):
    """``zoo.load`` of the run directory alone (an empty data root) rebuilds the model, and ``recommend`` on a
    test user's raw history returns the test loop's top-k: the lists of the model's own scores / ``rank`` on
    the test batch, with the target inside whenever the evaluator ranked it within k."""
    from zoo.errors import ZooError
    from zoo.inference import FAMILIES, load

    corpus = synthetic_corpus()
    cfg = config(model_name, tmp_path / "runs", "trainer.limit_test_batches=1")
    metrics = run(cfg, corpus=corpus)
    (run_dir,) = (tmp_path / "runs" / cfg.recipe).iterdir()
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("ZOO_DATA_DIR", str(tmp_path / "empty"))
    if MODELS.get(model_name).task not in FAMILIES:  # no item ranking to serve: refused in one line
        with pytest.raises(ZooError, match="zoo.load serves") as err:
            load(run_dir)
        assert "\n" not in str(err.value)
        return
    rec = load(run_dir)
    assert rec.info["method"] == model_name
    assert {k: v for k, v in rec.info["metrics"].items() if k.startswith("test/")} == pytest.approx(
        {k: v for k, v in metrics.items() if k.startswith("test/")}
    )
    datamodule, batch = _test_batch(rec, corpus)
    examples = datamodule.examples("test") if rec.model.task != "ctr" else None
    model, k = rec.model, 5
    with torch.no_grad(), rec._testing():
        if model.task == "ctr":
            clicks = torch.sigmoid(model.predict(batch)).tolist()
            rows = zip(
                batch["user"].tolist(), batch["item"].tolist(), clicks, batch["history"], batch["history_rating"]
            )
            for user, item, p, history, rated in list(rows)[:4]:  # the row's own history and ratings
                kept = history > 0
                ranked = rec.recommend(
                    [corpus.item_ids[i] for i in history[kept].tolist()],
                    k=rec.num_items,
                    exclude_seen=False,
                    user=corpus.user_ids[user],
                    ratings=rated[kept].tolist(),
                )
                assert len(ranked) == rec.num_items
                score = {r["item"]: r["score"] for r in ranked}[corpus.item_ids[item]]
                assert score == pytest.approx(p, abs=1e-6)
            return
        ranks = model.test_metrics.ranks(model, batch)  # the test loop's evaluator
        if model.task == "generative":
            width = max(max(cfg.eval.ks), int(cfg.eval.num_beams))
            expected = model.rank(batch, width, candidates=batch.get("candidates"))[:, :k].tolist()
        else:
            scores = model.score(batch).float().clone()
            scores[:, 0] = float("-inf")
            top = scores.topk(k, dim=1)
            expected, expected_scores = top.indices.tolist(), top.values.tolist()
    rows = len(batch["target"])
    histories = [[corpus.item_ids[i] for i in corpus.items[examples.start[r] : examples.end[r]]] for r in range(rows)]
    users = [corpus.user_ids[u] for u in examples.user[:rows]]
    got = rec.recommend(histories, k=k, exclude_seen=False, user=users)
    for r in range(rows):
        items = [rec.catalog.index(x["item"]) for x in got[r]]
        if model.task == "generative":
            assert items == [i for i in expected[r] if i > 0], f"{model_name}: row {r}"
        else:  # equal scores may swap places: compare the scores, and the items where scores differ
            assert [x["score"] for x in got[r]] == pytest.approx(expected_scores[r], abs=1e-5)
            distinct = [i for i, s in zip(expected[r], expected_scores[r]) if expected_scores[r].count(s) == 1]
            assert set(distinct) <= set(items)
        target, rank = int(batch["target"][r]), int(ranks[r])
        if rank < k:
            assert target in items[: rank + 1], f"{model_name}: row {r} target at rank {rank} not recommended"
        assert all(x["title"] == corpus.title(i) for x, i in zip(got[r], items))
    # exclude_seen drops exactly the history's items
    seen_free = rec.recommend(histories[0], k=k, exclude_seen=True, user=users[0])
    assert seen_free and not {x["item"] for x in seen_free} & set(histories[0])


@pytest.mark.parametrize("model_name", MODELS.names())
def test_build_checks_the_settings_before_loading_data_or_building_a_stage(model_name, tmp_path, monkeypatch):
    import zoo.data.loading
    import zoo.stages
    from zoo.errors import ConfigError

    cfg = config(model_name, tmp_path)
    cls = MODELS.get(model_name)

    def refuse(cls_, cfg_):
        raise ConfigError("refused by check_config")

    def must_not_run(*args, **kwargs):
        raise AssertionError("data loaded or a stage built before the settings were checked")

    monkeypatch.setattr(cls, "check_config", classmethod(refuse), raising=False)
    monkeypatch.setattr(zoo.data.loading, "load_corpus", must_not_run)
    monkeypatch.setattr(zoo.stages, "resolve", must_not_run)
    with pytest.raises(ConfigError, match="refused by check_config"):
        build(cfg)
    with pytest.raises(ConfigError, match="refused by check_config"):
        compose(cfg.recipe, [*SHRINK, *cls.test_overrides])


@pytest.mark.parametrize(
    "recipe, override, message",
    [
        ("sasrec_ml100k", "model.train_rows=window", "unknown model.train_rows 'window'"),
        ("laser_ml100k", "model.prefix=image", "unknown model.prefix 'image'"),
        ("laser_ml100k", "model.mformer_router=soft", "unknown model.mformer_router 'soft'"),
        ("p5_ml100k", "model.arch=rnn", "unknown model.arch 'rnn'"),
        ("p5_ml100k", "model.eval_prompt=new", "unknown model.eval_prompt 'new'"),
        ("palr_ml100k", "model.retriever=bm25", "unknown model.retriever 'bm25'"),
        ("uem_genres_ml100k", "model.history=audio", "unknown model.history 'audio'"),
        ("kar_din_ml100k", "model.kar_adaptor=moe", "unknown model.kar_adaptor 'moe'"),
        ("kar_deepfm_ml100k", "model.kar_towers=all", "unknown model.kar_towers 'all'"),
        ("kar_din_ml100k", "model.kar_backend=grpc", "unknown model.kar_backend 'grpc'"),
    ],
)
def test_a_bad_model_setting_fails_in_one_line_when_composed(recipe, override, message):
    from zoo.errors import ConfigError

    with pytest.raises(ConfigError, match=message) as err:
        compose(recipe, [override])
    assert "\n" not in str(err.value)
