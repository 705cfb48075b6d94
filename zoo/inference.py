"""Use a trained model: ``zoo.load(path)`` -> :class:`Recommender` with ``recommend(history, k)`` over raw item ids.

``path`` is a run directory, a checkpoint inside one, or a folder written by ``zoo.export``. The model is rebuilt
from the run's config and what the run saved for inference in ``<run_dir>/inference/`` when it started
(:func:`save_bundle`), without the raw dataset:

* ``items.json``: the item table (raw ids, index = internal id, 0 = padding "", and every item text field:
  titles, genres, ... what text methods and CTR features read);
* ``users.json``: raw user ids and user features (CTR models, hashed user tokens);
* ``counts.npz``: each item's count in the histories before the validation and the test targets
  (``train_item_counts``: popularity, PALR's popularity retriever, sampled-softmax's logQ);
* ``meta.json``: corpus name and fingerprint, sizes, creation time;
* ``stages/<name>/``: the stage artifacts the method received (Semantic IDs, a retriever's run and candidates),
  hard-linked (else copied) from the stage cache.

Interactions are not kept: ml100k's bundle is ~0.2 MB. Then the builder's steps run on an interaction-free corpus
(config -> stages -> DataModule -> model -> ``prepare``) and the weights come from the checkpoint
(``best.ckpt``, else ``last.ckpt``; a model that trains nothing, e.g. ``pop``, is whole after ``prepare``) or the
export's ``model.safetensors``.

``recommend`` builds the batch with the test loop's own code (``ExampleDataset``: the last ``data.max_len`` items,
left-padded, the model's batch transform; ``exclude_seen`` is the ``eval.mask_seen`` rule: every item of the given
history is dropped), so for a test user's history it returns the test loop's top-k (``tests/test_contracts.py``).
Scores: scoring models give their item scores; TIGER and the LLM recommenders give the beam log-probability of
each item (their beam search); other generative models give the rank-derived score 1 / (1 + position); CTR models
(``fm``) need ``user=`` (a known raw user id) and rank every item by predicted click probability.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zoo.errors import DataError, RequestError, ZooError

BUNDLE = "inference"
FAMILIES = ("sequential", "generative", "ctr")  # the task families recommend() serves
EXPORT_CONFIG = "zoo_config.yaml"
EXPORT_WEIGHTS = "model.safetensors"
EXPORT_FROZEN = "frozen_weights.json"


# -- what a run saves for inference -------------------------------------------------------------------------
def save_bundle(run_dir: Path, model_cls, cfg, datamodule, artifacts: dict) -> Path:
    """Write ``<run_dir>/inference/`` (see the module docstring) atomically; returns its path."""
    from zoo.io import write_json_atomic
    from zoo.stages import corpus_fingerprint

    corpus = datamodule.corpus
    out = Path(run_dir) / BUNDLE
    tmp = out.with_name(f".{BUNDLE}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        # fields as [name, values] pairs: their order is the corpus's (CTR feature layouts depend on it)
        write_json_atomic(tmp / "items.json", {"ids": list(corpus.item_ids), "text": list(corpus.item_text.items())})
        users = {"ids": list(corpus.user_ids), "features": list(corpus.user_features.items())}
        write_json_atomic(tmp / "users.json", users)
        if needs_interactions(model_cls, cfg):
            with open(tmp / "interactions.npz", "wb") as f:
                ratings = corpus.ratings if corpus.ratings is not None else np.zeros(0, dtype=np.float32)
                np.savez_compressed(f, offsets=corpus.offsets, items=corpus.items.astype(np.int32), ratings=ratings)
        if hasattr(datamodule, "train_item_counts"):  # sequential DataModules
            with open(tmp / "counts.npz", "wb") as f:
                splits = [s for s in ("val", "test") if _has_split(datamodule, s)]
                np.savez(f, **{s: datamodule.train_item_counts(s) for s in splits})
        for name in model_cls.stages_for(cfg):
            artifact = artifacts[name]
            _link_tree(artifact.path, tmp / "stages" / name)
            write_json_atomic(
                tmp / "stages" / name / "artifact.json",
                {
                    "stage": name,
                    "key": artifact.key,
                    "metrics": artifact.metrics,
                    "inputs": artifact.inputs,
                    "cached_at": str(artifact.path),
                },
            )
        write_json_atomic(
            tmp / "meta.json",
            {
                "corpus": corpus.name,
                "fingerprint": corpus_fingerprint(corpus),
                "num_items": corpus.num_items,
                "num_users": corpus.num_users,
                "num_interactions": corpus.num_interactions,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
        )
        if out.exists():
            shutil.rmtree(out)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def needs_interactions(model_cls, cfg) -> bool:
    """Whether the bundle keeps the interactions (and ratings): for models that read them when they are built
    (``needs_interactions = True``, or ``model.use_ratings``, e.g. UEM's rating lookup)."""
    return bool(getattr(model_cls, "needs_interactions", False) or cfg.model.get("use_ratings", False))


def _has_split(datamodule, split: str) -> bool:
    try:
        datamodule.train_item_counts(split)
        return True
    except DataError:
        return False


def _link_tree(src: Path, dst: Path) -> None:
    """Hard-link every file of ``src`` under ``dst`` (copy where links are impossible, e.g. across devices)."""
    for path in sorted(Path(src).rglob("*")):
        target = dst / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)


# -- the catalogue ------------------------------------------------------------------------------------------
class Catalog:
    """The items of a loaded model: ``ids`` (raw ids, index = internal id, 0 = padding ""), ``titles`` (same
    indexing, "" when unknown), ``index(raw) -> int``."""

    def __init__(self, ids: list[str], titles: list[str] | None = None) -> None:
        self.ids = list(ids)
        self.titles = list(titles) if titles else [""] * len(self.ids)
        self._index = {raw: i for i, raw in enumerate(self.ids) if i > 0}

    def __len__(self) -> int:
        return len(self.ids) - 1

    def __contains__(self, raw) -> bool:
        return str(raw) in self._index

    def index(self, raw) -> int:
        key = _raw_id(raw)
        if key not in self._index:
            raise RequestError(f"unknown item id {key!r}")
        return self._index[key]

    def indices(self, raws: list) -> list[int]:
        """Internal ids of ``raws``; RequestError naming up to 5 unknown ids and how many there are."""
        keys = [_raw_id(r) for r in raws]
        unknown = list(dict.fromkeys(k for k in keys if k not in self._index))
        if unknown:
            shown = ", ".join(repr(u) for u in unknown[:5])
            more = f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else ""
            raise RequestError(f"{len(unknown)} unknown item id{'s' if len(unknown) > 1 else ''}: {shown}{more}")
        return [self._index[k] for k in keys]


def _raw_id(value) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, np.integer)):
        raise RequestError(f"an item id must be a string (or an integer), got {type(value).__name__}")
    return str(value)


# -- the loaded model ---------------------------------------------------------------------------------------
@dataclass
class _Source:
    kind: str  # "run" | "checkpoint" | "export"
    root: Path  # the run directory or export folder
    config: Any  # path of a YAML config, or a dict (a checkpoint's hyper-parameters)
    weights: Path | None  # a .ckpt, a .safetensors, or None (nothing trained)


class Recommender:
    """A loaded model (``zoo.load``): ``recommend``, ``catalog``, ``info``, the LightningModule as ``model``."""

    def __init__(self, model, datamodule, cfg, catalog: Catalog, users: list[str], info: dict, retriever=None):
        self.model = model
        self.datamodule = datamodule
        self.cfg = cfg
        self.catalog = catalog
        self.info = info
        self.retriever = retriever  # PALR: the loaded retriever run that proposes the candidates
        self._users = {raw: i for i, raw in enumerate(users)}
        self._tester = None

    @property
    def num_items(self) -> int:
        return len(self.catalog)

    # -- the request ----------------------------------------------------------------------------------------
    def recommend(self, history, k: int = 10, exclude_seen: bool = True, user=None, ratings=None):
        """The top-``k`` items after ``history`` (raw item ids, oldest first) as ``[{"item", "title", "score"}]``,
        best first; a list of histories gives a list of such lists (``user`` then a list too, or None).
        ``exclude_seen`` drops the history's items. ``user`` (a raw user id) is optional for sequential and
        generative models (an unknown or missing user is user -1, as in sources without user ids) and required
        for CTR models, which also read the ``ratings`` of the history's items (a list aligned with ``history``, a
        list of lists for many; missing ratings are 0, the padding value). Fewer than ``k`` entries come back when
        fewer items remain."""
        histories, single = _histories(history, self.model.task == "ctr")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= int(k) <= self.num_items:
            raise RequestError(f"k must be an integer in 1..{self.num_items}, got {k!r}")
        if not isinstance(exclude_seen, bool):
            raise RequestError(f"exclude_seen must be true or false, got {exclude_seen!r}")
        users = [user] if single else (list(user) if user is not None else [None] * len(histories))
        if single and isinstance(user, (list, tuple)):
            raise RequestError("user must be one raw user id for one history")
        if len(users) != len(histories):
            raise RequestError(f"{len(users)} users for {len(histories)} histories")
        internal = [self.catalog.indices(h) for h in histories]
        user_index = [self._user_index(u) for u in users]
        rated = _ratings(ratings, histories, single)
        items, scores = self.top_k(internal, user_index, int(k), exclude_seen, rated)
        out = [
            [
                {"item": self.catalog.ids[i], "title": self.catalog.titles[i], "score": float(s)}
                for i, s in zip(row_items, row_scores)
            ]
            for row_items, row_scores in zip(items, scores)
        ]
        return out[0] if single else out

    def _user_index(self, user) -> int:
        if user is None:
            if self.model.task == "ctr":
                raise RequestError("a CTR model ranks items for a known user: pass user=<raw user id>")
            return -1
        if isinstance(user, bool) or not isinstance(user, (str, int, np.integer)):
            raise RequestError(f"a user id must be a string (or an integer), got {type(user).__name__}")
        index = self._users.get(str(user))
        if index is None and self.model.task == "ctr":
            raise RequestError(f"unknown user id {str(user)!r}: a CTR model ranks items for users it was trained on")
        return -1 if index is None else index

    # -- internal ids in, internal ids out ------------------------------------------------------------------
    def top_k(self, histories: list[list[int]], users: list[int], k: int, exclude_seen: bool, ratings=None):
        """(items, scores): per row the ``k`` best internal item ids and their scores (fewer when fewer remain)."""
        import torch

        with torch.no_grad(), self._testing():
            if self.model.task == "ctr":
                return self._ctr_top_k(histories, users, k, exclude_seen, ratings)
            batch = self.batch(histories, users, exclude_seen)
            if self.model.task == "generative":
                return self._generative_top_k(batch, k, exclude_seen)
            return self._scoring_top_k(batch, k, exclude_seen)

    def batch(self, histories: list[list[int]], users: list[int], exclude_seen: bool = False) -> dict:
        """The evaluation batch of these histories, built as the test loop builds one (``ExampleDataset`` and the
        model's transform), with a retriever's candidates for a re-ranker."""
        import torch

        from zoo.data.datamodule import ExampleDataset, Examples

        lengths = np.array([len(h) for h in histories], dtype=np.int64)
        offsets = np.zeros(len(histories) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.fromiter((i for h in histories for i in h), dtype=np.int64, count=int(offsets[-1]))
        candidates = None
        if self.retriever is not None:
            k = int(self.cfg.model.retriever_k)
            candidates = np.asarray(self.retriever.top_k(histories, users, k, exclude_seen=False)[0], dtype=np.int64)
        elif getattr(getattr(self.datamodule, "protocol", None), "candidates", "full") != "full":
            raise RequestError(
                f"{self.cfg.model.name} ranks fixed candidate lists ({self.datamodule.protocol.describe()}): "
                "it cannot rank the items of a new history"
            )
        examples = Examples(
            flat,
            offsets[:-1],
            offsets[1:],
            np.zeros(len(histories), dtype=np.int64),
            np.asarray(users, dtype=np.int64),
            candidates,
        )
        dataset = ExampleDataset(
            examples, self.datamodule.max_len, False, self.datamodule.spec.transform, with_seen=exclude_seen
        )
        batch = dataset[list(range(len(histories)))]
        device = self.model.device
        return {key: value.to(device) if torch.is_tensor(value) else value for key, value in batch.items()}

    def _scoring_top_k(self, batch: dict, k: int, exclude_seen: bool):
        import torch

        from zoo.metrics.chunked import running_top_k

        model = self.model
        state = model.user_state(batch)
        rows = len(batch["history"])
        masked = torch.zeros(rows, model.num_items + 1, dtype=torch.bool, device=model.device)
        if exclude_seen:
            masked.scatter_(1, batch["seen"].long(), True)
        masked[:, 0] = True

        def chunk(start: int, end: int):
            return model.score_state(state, start, end).float().masked_fill(masked[:, start:end], float("-inf"))

        scores, items = running_top_k(chunk, model.num_items, k, int(self.cfg.eval.item_chunk_size))
        return _finite_rows(items, scores)

    def _generative_top_k(self, batch: dict, k: int, exclude_seen: bool):
        from zoo.metrics.ranking import distinct_seen

        model = self.model
        # as many beams as the test loop decodes (max(ks), eval.num_beams), so its first k are the test loop's
        width = max(k, max(self.cfg.eval.ks), int(self.cfg.eval.num_beams))
        candidates = batch.get("candidates")
        seen = batch.get("seen") if exclude_seen else None
        extra = 0
        if seen is not None and candidates is None and len(seen):
            extra = int(distinct_seen(seen.long(), seen.new_zeros(len(seen))).sum(dim=1).max())
        items, scores = scored_rank(model, batch, width + extra, candidates)
        items, scores = items.tolist(), scores.tolist()
        drop = [set(row) for row in seen.tolist()] if seen is not None else [set() for _ in items]
        out_items, out_scores = [], []
        for row_items, row_scores, row_drop in zip(items, scores, drop):
            pairs = [(i, s) for i, s in zip(row_items, row_scores) if i > 0 and i not in row_drop][:k]
            out_items.append([i for i, _ in pairs])
            out_scores.append([s for _, s in pairs])
        return out_items, out_scores

    def _ctr_top_k(self, histories: list[list[int]], users: list[int], k: int, exclude_seen: bool, ratings=None):
        import torch

        model, features = self.model, self.datamodule.features
        max_len = int(self.datamodule.max_history)
        all_items, all_scores = [], []
        ratings = ratings or [[0.0] * len(h) for h in histories]
        for history, user, rated in zip(histories, users, ratings):
            scores = torch.empty(self.num_items + 1)
            padded = ([0] * max_len + list(history))[-max_len:] if max_len else []
            padded_ratings = ([0.0] * max_len + list(rated))[-max_len:] if max_len else []
            for start in range(1, self.num_items + 1, 4096):
                items = np.arange(start, min(start + 4096, self.num_items + 1))
                n = len(items)
                batch = {
                    "user": torch.full((n,), user, dtype=torch.long),
                    "item": torch.from_numpy(items),
                    "user_features": torch.from_numpy(np.repeat(features.users[[user]], n, axis=0)),
                    "item_features": torch.from_numpy(features.items[items]),
                    "history": torch.tensor([padded] * n, dtype=torch.long).view(n, max_len),
                    "history_rating": torch.tensor([padded_ratings] * n, dtype=torch.float32).view(n, max_len),
                    "rating": torch.zeros(n),
                    "label": torch.zeros(n),
                }
                batch = {key: value.to(model.device) for key, value in batch.items()}
                scores[start : start + n] = torch.sigmoid(model.predict(batch).float()).cpu()
            scores[0] = float("-inf")
            if exclude_seen and history:
                scores[torch.tensor(history)] = float("-inf")
            top = scores.topk(min(k, self.num_items), dim=0)
            items, values = _finite_rows(top.indices.view(1, -1), top.values.view(1, -1))
            all_items += items
            all_scores += values
        return all_items, all_scores

    @contextmanager
    def _testing(self):
        """The model sees a trainer in its test stage, as in the test loop (``pop`` scores by its test counts).
        It stays attached (no swap per call), so concurrent requests from a server's threads are safe."""
        if self._tester is None:
            self._tester = _testing_trainer(self.model)
        if self.model._trainer is not self._tester:
            self.model.trainer = self._tester
        yield

    # -- the test loop on the real data ---------------------------------------------------------------------
    def evaluate(self, corpus=None) -> dict[str, float]:
        """Test metrics of the loaded weights on the run's data (``corpus``, else loaded from ``data:``): the
        test loop of ``zoo.run``, for checking that a load or an export reproduces the run."""
        from zoo.data.loading import load_corpus
        from zoo.tasks import task_of
        from zoo.trainer import build_trainer

        cfg = self.cfg
        datamodule = task_of(type(self.model)).datamodule(
            cfg, getattr(self.datamodule, "protocol", None), corpus if corpus is not None else load_corpus(cfg.data)
        )
        datamodule.connect(self.model.data_spec())
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            trainer = build_trainer(cfg, self.model, Path(tmp), loggers=False)
            trainer.test(self.model, datamodule=datamodule, verbose=False)
        self.model.eval()
        return {k: v for k, v in self.model.test_results.items() if k.startswith("test/")}


def _finite_rows(items, scores):
    import torch

    keep = torch.isfinite(scores)
    return (
        [row[ok].tolist() for row, ok in zip(items, keep)],
        [row[ok].tolist() for row, ok in zip(scores, keep)],
    )


def _histories(history, ctr: bool) -> tuple[list[list], bool]:
    """(list of histories, whether one history was given); RequestError on a wrong type or an empty history."""
    if isinstance(history, (str, bytes)) or not isinstance(history, (list, tuple)):
        raise RequestError(
            f"history must be a list of item ids (or a list of such lists), got {type(history).__name__}"
        )
    nested = [isinstance(h, (list, tuple)) for h in history]
    if history and all(nested):
        histories, single = [list(h) for h in history], False
    elif not any(nested):
        histories, single = [list(history)], True
    else:
        raise RequestError("history must be a list of item ids or a list of lists of item ids, not a mix")
    for i, h in enumerate(histories):
        if not h and not ctr:
            raise RequestError("empty history" + ("" if single else f" (history {i})") + ": give at least one item id")
    if not histories:
        raise RequestError("no histories given")
    return histories, single


def _ratings(ratings, histories: list[list], single: bool) -> list[list[float]] | None:
    """The ratings of a CTR request, one list per history and aligned with it (or None)."""
    if ratings is None:
        return None
    rows = [ratings] if single else list(ratings)
    if len(rows) != len(histories):
        raise RequestError(f"{len(rows)} rating lists for {len(histories)} histories")
    out = []
    for row, history in zip(rows, histories):
        if not isinstance(row, (list, tuple)) or len(row) != len(history):
            raise RequestError("ratings must be a list of numbers as long as its history")
        if any(isinstance(r, bool) or not isinstance(r, (int, float, np.integer, np.floating)) for r in row):
            raise RequestError("ratings must be numbers")
        out.append([float(r) for r in row])
    return out


def scored_rank(model, batch: dict, k: int, candidates=None):
    """(items [B, k], scores [B, k]) of a generative model: its ``rank_scored`` where it has one (TIGER and the LLM
    recommenders: the beam log-probabilities of exactly the lists ``rank`` returns), else ``rank`` with the
    rank-derived score 1 / (1 + position)."""
    import torch

    if hasattr(model, "rank_scored"):
        return model.rank_scored(batch, k, candidates)
    items = model.rank(batch, k, candidates=candidates)
    position = torch.arange(items.shape[1], device=items.device, dtype=torch.float32)
    return items, (1.0 / (1.0 + position)).expand(items.shape).masked_fill(items == 0, float("-inf"))


def _testing_trainer(model):
    import lightning as L
    from lightning.pytorch.trainer.states import RunningStage, TrainerFn

    quiet = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        trainer = L.Trainer(
            accelerator="cpu" if model.device.type == "cpu" else "auto",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
    finally:
        quiet.setLevel(level)
    trainer.state.fn = TrainerFn.TESTING
    trainer.state.stage = RunningStage.TESTING
    return trainer


# -- loading ------------------------------------------------------------------------------------------------
def _locate(path) -> _Source:
    if not isinstance(path, (str, os.PathLike)):
        raise DataError(f"zoo.load: expected a path, got {type(path).__name__}")
    p = Path(path)
    if not p.exists():
        raise DataError(f"zoo.load: {p} does not exist")
    if p.is_file():
        if p.suffix != ".ckpt":
            raise DataError(f"zoo.load: {p} is neither a run directory, a .ckpt checkpoint nor an exported folder")
        return _Source("checkpoint", p.parent.parent, None, p)
    if (p / EXPORT_CONFIG).is_file():
        weights = p / EXPORT_WEIGHTS
        return _Source("export", p, p / EXPORT_CONFIG, weights if weights.is_file() else None)
    if (p / "config.yaml").is_file():
        ckpts = p / "checkpoints"
        weights = next((ckpts / n for n in ("best.ckpt", "last.ckpt") if (ckpts / n).is_file()), None)
        return _Source("run", p, p / "config.yaml", weights)
    raise DataError(f"zoo.load: {p} holds no config.yaml (run directory) or {EXPORT_CONFIG} (exported folder)")


def _compose(config) -> Any:
    """The composed, validated config of a saved YAML file or a checkpoint's hyper-parameters dict."""
    import tempfile

    import yaml

    from zoo.config import compose

    if isinstance(config, dict):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "config.yaml"
            path.write_text(yaml.safe_dump(config))
            cfg = compose(str(path), [])
        saved = config
    else:
        try:
            saved = yaml.safe_load(Path(config).read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise DataError(f"{config}: cannot be read ({str(err).splitlines()[0]})") from None
        cfg = compose(str(config), [])
    cfg.recipe = str(saved.get("recipe") or cfg.recipe) if isinstance(saved, dict) else cfg.recipe
    cfg.resume = None
    cfg.train = False
    cfg.data.num_workers = 0
    return cfg


def _read_weights(source: _Source, model) -> dict | None:
    """A Lightning-checkpoint-like dict (``state_dict`` and what ``on_load_checkpoint`` reads), or None."""
    if source.weights is None:
        return None
    if source.weights.suffix == ".ckpt":
        from zoo.run import read_checkpoint

        return read_checkpoint(str(source.weights), model)
    from zoo.models.base import FROZEN_KEY

    try:
        from safetensors.torch import load_file

        state = load_file(str(source.weights))
    except Exception as err:  # truncated or foreign file
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{source.weights} cannot be read ({reason[:200]}): it is truncated or corrupt") from None
    ckpt: dict = {"state_dict": state}
    frozen = source.root / EXPORT_FROZEN
    if frozen.is_file():
        ckpt[FROZEN_KEY] = json.loads(frozen.read_text())
    return ckpt


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"{path}: cannot be read ({reason}): the run's inference files are damaged") from None


def load(path, device: str | None = None) -> Recommender:
    """A ready model from a run directory, a checkpoint in one, or a folder written by ``zoo.export`` (see the
    module docstring). A missing, incomplete or corrupt path is a DataError of one line."""
    source = _locate(path)
    bundle = source.root / BUNDLE
    if not (bundle / "items.json").is_file():
        where = "checkpoint's run directory" if source.kind == "checkpoint" else "folder"
        raise DataError(
            f"zoo.load: {source.root / BUNDLE} is missing: the {where} has no inference files "
            "(runs write them when they start; train it again with this version of the zoo)"
        )
    if source.kind == "checkpoint":
        source.config = _checkpoint_config(source.weights)
    _check_family(source.config)
    cfg = _compose(source.config)
    return _assemble(source, cfg, bundle, device)


def _check_family(config) -> None:
    """Refuse, before composing, a model of a family ``recommend`` does not serve (multilabel, ...)."""
    import yaml

    from zoo.registry import MODELS, populate

    try:
        raw = config if isinstance(config, dict) else yaml.safe_load(Path(config).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise DataError(f"{config}: cannot be read ({str(err).splitlines()[0]})") from None
    name = (raw.get("model") or {}).get("name") if isinstance(raw, dict) else None
    if not name:
        raise DataError(f"zoo.load: {config} names no model.name")
    populate()
    try:
        model_cls = MODELS.get(name)
    except ZooError:
        return  # a plugin's model: composing imports the recipe's plugins, then looks it up
    task = getattr(model_cls, "task", "sequential")
    if not getattr(model_cls, "standalone", False) and task not in FAMILIES:
        raise ZooError(
            f"zoo.load: model '{name}' is a {task} model; zoo.load serves the {', '.join(FAMILIES)} families"
        )


def _checkpoint_config(path: Path):
    from zoo.run import read_checkpoint

    ckpt = read_checkpoint(str(path))
    config = (ckpt.get("hyper_parameters") or {}).get("config")
    if not isinstance(config, dict):
        raise DataError(f"checkpoint {path} holds no zoo config in its hyper-parameters")
    return config


def _assemble(source: _Source, cfg, bundle: Path, device: str | None) -> Recommender:
    import torch

    from zoo.build import apply_defaults
    from zoo.data.corpus import Corpus
    from zoo.evaluation import Protocol
    from zoo.registry import MODELS
    from zoo.stages import Artifact
    from zoo.tasks import task_of

    model_cls = MODELS.get(cfg.model.name)
    if getattr(model_cls, "standalone", False):
        raise ZooError(f"zoo.load: model '{cfg.model.name}' is a stage, not a recommender")
    if getattr(model_cls, "task", "sequential") not in FAMILIES:
        raise ZooError(
            f"zoo.load: model '{cfg.model.name}' is a {model_cls.task} model; zoo.load serves the "
            f"{', '.join(FAMILIES)} families"
        )
    items, users = _read_json(bundle / "items.json"), _read_json(bundle / "users.json")
    meta = _read_json(bundle / "meta.json") if (bundle / "meta.json").is_file() else {}
    offsets, interactions, ratings = np.zeros(len(users["ids"]) + 1, dtype=np.int64), np.zeros(0, dtype=np.int64), None
    if (bundle / "interactions.npz").is_file():
        with np.load(bundle / "interactions.npz") as saved:
            offsets, interactions = saved["offsets"].astype(np.int64), saved["items"].astype(np.int64)
            ratings = saved["ratings"] if len(saved["ratings"]) else None
    corpus = Corpus(
        name=str(meta.get("corpus", cfg.data.name)),
        item_ids=list(items["ids"]),
        user_ids=list(users["ids"]),
        offsets=offsets,
        items=interactions,
        ratings=ratings,
        item_text={k: list(v) for k, v in items.get("text", [])},
        user_features={k: list(v) for k, v in users.get("features", [])},
    )
    task = task_of(model_cls)
    apply_defaults(cfg, task)
    artifacts, records = {}, []
    for name in model_cls.stages_for(cfg):
        folder = bundle / "stages" / name
        if not (folder / "artifact.json").is_file():
            raise DataError(f"zoo.load: {folder} is missing: the stage artifact '{name}' was not saved with the run")
        record = _read_json(folder / "artifact.json")
        records.append(record)
        artifacts[name] = Artifact(
            name, record["key"], folder, True, record.get("metrics", {}), record.get("inputs", {})
        )
    cached = [str(r.get("cached_at")) for r in records if r.get("cached_at")]
    if cfg.data.candidates_path and any(str(cfg.data.candidates_path).startswith(c) for c in cached):
        cfg.data.candidates_path = None  # recorded by the build from a stage: protocol_for sets it again
    protocol = model_cls.protocol_for(cfg, Protocol.from_config(cfg), artifacts)
    if protocol.candidates == "retriever" and protocol.candidates_path:
        cfg.data.candidates_path = protocol.candidates_path  # as zoo.build records it
    datamodule = task.datamodule(cfg, protocol, corpus)
    counts = dict(np.load(bundle / "counts.npz")) if (bundle / "counts.npz").is_file() else {}

    def train_item_counts(split: str = "val") -> np.ndarray:
        if split not in counts:
            raise DataError(f"zoo.load: {bundle / 'counts.npz'} has no item counts for '{split}'")
        return counts[split]

    datamodule.train_item_counts = train_item_counts  # the saved counts stand in for the interactions
    model = model_cls(cfg, datamodule, artifacts)
    datamodule.connect(model.data_spec())
    model.prepare(datamodule)
    ckpt = _read_weights(source, model)
    if ckpt is not None:
        try:
            model.on_load_checkpoint(ckpt)
            model.load_state_dict(ckpt["state_dict"], strict=True)
        except RuntimeError as err:
            line = str(err).strip().splitlines()[0][:200]
            raise DataError(f"{source.weights} does not fit the model of its config ({line})") from None
    elif model.trainable:
        where = source.root / ("checkpoints" if source.kind == "run" else EXPORT_WEIGHTS)
        raise DataError(f"zoo.load: no trained weights at {where} (no best.ckpt or last.ckpt)")
    model.eval()
    if device:
        model.to(torch.device(device))
    retriever = None
    if "retriever" in artifacts and cfg.model.name and getattr(cfg.model, "retriever", None) == "stage":
        retriever = load(artifacts["retriever"].path / "run", device=device)
    metrics = _read_json(source.root / "metrics.json") if (source.root / "metrics.json").is_file() else {}
    info = {
        "method": cfg.model.name,
        "recipe": cfg.recipe,
        "dataset": cfg.data.name,
        "run_dir": str(source.root),
        "source": source.kind,
        "weights": str(source.weights) if source.weights else None,
        "metrics": metrics,
        "created": meta.get("created"),
        "fingerprint": meta.get("fingerprint"),
    }
    catalog = Catalog(corpus.item_ids, corpus.item_text.get("title"))
    return Recommender(model, datamodule, cfg, catalog, corpus.user_ids, info, retriever)
