"""Stage artifacts: what a method needs from upstream stages, produced once, cached under a key, reused.

A method names the stages it needs (``RecModel.stages`` or ``stages_for(cfg)``); ``zoo.build`` resolves each one
before building the model and hands the results over in ``model.artifacts[name]`` (an :class:`Artifact`).

A :class:`Stage` is registered in ``STAGES`` by name and says

* ``inputs(cfg, corpus)``: the upstream settings that change its output (a JSON-able dict: an encoder name, the
  RQ-VAE section, a retriever's resolved recipe, ...), and the artifacts of other stages it reads (``needs``);
* ``build(cfg, corpus, out, upstream)``: writes its files into the empty directory ``out`` and returns metrics.

The cache key hashes the stage name, its ``version`` (bumped when the code that produces it changes), the corpus
content (:func:`corpus_fingerprint`), the inputs and the keys of the upstream artifacts. An artifact is a
directory ``<cache root>/stages/<stage>/<corpus>-<key>/`` (``zoo.data.cache.cache_root``: ``data.cache_dir``,
``$ZOO_CACHE_DIR``, ...) holding its files and ``manifest.json``. It is built in a temporary directory and renamed
into place once complete, so an interrupted build leaves nothing that a later run would reuse; a changed input
gives another key, so a stale artifact is never reused. Every resolution is logged (built or reused, and where)
and listed in the run directory's ``stages.json``.

Built-in stages: ``item_embeddings`` (item text -> sentence embeddings), ``semantic_ids`` (embeddings -> RQ-VAE
-> unique Semantic IDs), ``retriever`` (train a retriever recipe, e.g. SASRec, keep its checkpoint and export its
top-K candidate lists).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from zoo.data.corpus import Corpus
from zoo.errors import ConfigError
from zoo.io import write_json_atomic
from zoo.registry import Registry

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"


@dataclass
class Artifact:
    stage: str
    key: str
    path: Path  # the artifact's directory
    reused: bool
    metrics: dict[str, float] = field(default_factory=dict)
    inputs: dict[str, Any] = field(default_factory=dict)

    def file(self, name: str) -> Path:
        return self.path / name

    def summary(self) -> dict[str, Any]:
        return {"stage": self.stage, "key": self.key, "path": str(self.path), "reused": self.reused}


class Stage:
    name = ""
    version = 1
    needs: tuple[str, ...] = ()  # stages whose artifacts this one reads

    def inputs(self, cfg: DictConfig, corpus: Corpus) -> dict[str, Any]:
        raise NotImplementedError

    def build(self, cfg: DictConfig, corpus: Corpus, out: Path, upstream: dict[str, Artifact]) -> dict[str, float]:
        raise NotImplementedError


STAGES: Registry[type[Stage]] = Registry("stage")


def corpus_fingerprint(corpus: Corpus) -> str:
    """A hash of the corpus content a stage can depend on (interactions, ids, item text, user features)."""
    digest = hashlib.sha256()
    for array in (corpus.offsets, corpus.items):
        digest.update(np.ascontiguousarray(array).tobytes())
    digest.update(json.dumps([corpus.name, corpus.item_ids, corpus.user_ids], ensure_ascii=False).encode())
    for table in (corpus.item_text, corpus.user_features):
        digest.update(json.dumps(table, sort_keys=True, ensure_ascii=False).encode())
    for name, split in sorted(corpus.fixed_splits.items()):
        digest.update(name.encode())
        for array in (split.users, split.history, split.offsets, split.targets):
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:20]


def stage_root(cfg: DictConfig) -> Path:
    from zoo.data.cache import cache_root

    return cache_root(cfg.data) / "stages"


def stage_key(stage: Stage, inputs: dict, corpus_key: str, upstream: dict[str, Artifact]) -> str:
    blob = {
        "stage": stage.name,
        "version": stage.version,
        "corpus": corpus_key,
        "inputs": inputs,
        "upstream": {name: artifact.key for name, artifact in sorted(upstream.items())},
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


def resolve(
    name: str,
    cfg: DictConfig,
    corpus: Corpus,
    rebuild: bool = False,
    resolved: dict[str, Artifact] | None = None,
) -> Artifact:
    """The artifact of stage ``name`` for ``cfg`` and ``corpus``: reused from the cache when complete, else built
    (with the stages it needs first) and cached atomically. ``rebuild`` builds it again even if cached."""
    resolved = {} if resolved is None else resolved
    if name in resolved:
        return resolved[name]
    stage = STAGES.get(name)()
    upstream = {need: resolve(need, cfg, corpus, False, resolved) for need in stage.needs}
    inputs = stage.inputs(cfg, corpus)
    key = stage_key(stage, inputs, corpus_fingerprint(corpus), upstream)
    path = stage_root(cfg) / name / f"{corpus.name}-{key}"
    manifest = path / MANIFEST
    if manifest.is_file() and not rebuild:
        problem = damaged(path)
        if problem is None:
            record = json.loads(manifest.read_text())
            artifact = Artifact(name, key, path, True, record.get("metrics", {}), inputs)
            _report(artifact)
            resolved[name] = artifact
            return artifact
        message = f"stage {name}: {path} is damaged ({problem}): rebuilding it"
        if logging.getLogger("zoo").handlers:
            log.warning(message)
        else:
            print(message, file=sys.stderr)
        rebuild = True
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    tmp.mkdir(parents=True)
    started = time.time()
    try:
        with preserved_rng():  # a run that builds a stage continues exactly like one that reuses it
            metrics = stage.build(cfg, corpus, tmp, upstream)
        metrics = {k: float(v) for k, v in (metrics or {}).items()}
        record = {
            "stage": name,
            "version": stage.version,
            "key": key,
            "corpus": corpus.name,
            "inputs": inputs,
            "upstream": {n: a.key for n, a in upstream.items()},
            "metrics": metrics,
            "build_s": round(time.time() - started, 3),
            "files": file_digests(tmp),
        }
        write_json_atomic(tmp / MANIFEST, record)
        if (path / MANIFEST).is_file() and not rebuild:  # another process finished first: keep its artifact
            shutil.rmtree(tmp, ignore_errors=True)
            return resolve(name, cfg, corpus, False, resolved)
        if path.exists():  # a rebuild (or an incomplete leftover): move the old one aside, then swap
            old = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.old")
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    artifact = Artifact(name, key, path, False, metrics, inputs)
    _report(artifact)
    resolved[name] = artifact
    return artifact


HASHED_BYTES = 64 << 20  # files up to this size are checked by content hash on reuse, larger ones by size


def file_digests(folder: Path) -> dict[str, dict]:
    """Size (and SHA-256 up to ``HASHED_BYTES``) of every file of an artifact, recorded in its manifest."""
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST):
        entry = {"size": path.stat().st_size}
        if entry["size"] <= HASHED_BYTES:
            entry["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        out[str(path.relative_to(folder))] = entry
    return out


def damaged(path: Path) -> str | None:
    """Why a complete-looking artifact cannot be trusted (a file missing, truncated or changed since it was
    built, an unreadable manifest), or None. Artifacts of older manifests without ``files`` are trusted."""
    try:
        record = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError) as err:
        return f"unreadable manifest: {err}"
    for name, entry in (record.get("files") or {}).items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != entry.get("size"):
            return f"{name} has {file.stat().st_size} bytes, {entry.get('size')} when built"
        if "sha256" in entry and hashlib.sha256(file.read_bytes()).hexdigest() != entry["sha256"]:
            return f"{name} changed since it was built"
    return None


@contextmanager
def preserved_rng():
    """Restore Python's, numpy's and torch's random states on exit."""
    import random

    import torch

    states = (random.getstate(), np.random.get_state(), torch.random.get_rng_state())
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.random.set_rng_state(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def _report(artifact: Artifact) -> None:
    """The stage line: a log line where the zoo's logs are set up (``zoo.logs``: the CLI, the benchmarks), else
    printed to stderr, so that a library user sees it too."""
    message = f"stage {artifact.stage}: {'reused' if artifact.reused else 'built'} {artifact.path}"
    if logging.getLogger("zoo").handlers:
        log.info(message)
    elif int(os.environ.get("LOCAL_RANK", "0")) == 0:
        print(message, file=sys.stderr)


def plain(section) -> Any:
    return OmegaConf.to_container(section, resolve=True) if isinstance(section, DictConfig) else section


# -- built-in stages --------------------------------------------------------------------------------------------
@STAGES.register("item_embeddings")
class ItemEmbeddingsStage(Stage):
    """Item text -> sentence embeddings (``embeddings.npy``, [N, d] float32, row i = item i + 1), from
    ``model.text_encoder`` over ``model.text_fields``."""

    name = "item_embeddings"

    def inputs(self, cfg, corpus):
        return {"encoder": cfg.model.text_encoder, "fields": list(cfg.model.text_fields)}

    def build(self, cfg, corpus, out, upstream):
        from zoo.modules.text_encoder import encode_items

        device = "cuda" if _wants_gpu(cfg) else "cpu"
        embeddings = encode_items(
            corpus, cfg.model.text_encoder, list(cfg.model.text_fields), cfg.model.encode_batch_size, device
        )
        np.save(out / "embeddings.npy", embeddings)
        return {"item_embeddings/dim": embeddings.shape[1]}


def load_embeddings(artifact: Artifact) -> np.ndarray:
    return np.load(artifact.file("embeddings.npy"))


@STAGES.register("semantic_ids")
class SemanticIdStage(Stage):
    """Item embeddings -> RQ-VAE (``model.rqvae``) -> Semantic IDs with a collision column (``codes.npy``), the
    RQ-VAE weights (``rqvae.pt``) and its rqvae/* metrics."""

    name = "semantic_ids"
    needs = ("item_embeddings",)

    def inputs(self, cfg, corpus):
        return {"rqvae": plain(cfg.model.rqvae), "seed": int(cfg.seed)}

    def build(self, cfg, corpus, out, upstream):
        import torch

        from zoo.models.rqvae import train_rqvae
        from zoo.modules.rqvae import add_collision_codes

        started = time.time()
        embeddings = load_embeddings(upstream["item_embeddings"])
        module, _ = train_rqvae(cfg, embeddings, out / "run", single_device=True)
        raw_codes, metrics = module.catalogue_metrics()
        metrics["time/rqvae_s"] = round(time.time() - started, 3)
        np.save(out / "codes.npy", add_collision_codes(raw_codes))
        torch.save(module.model.state_dict(), out / "rqvae.pt")
        shutil.rmtree(out / "run", ignore_errors=True)  # the trainer's checkpoints; the weights are rqvae.pt
        return metrics


def load_codes(artifact: Artifact) -> np.ndarray:
    return np.load(artifact.file("codes.npy"))


RUN_SPECIFIC = ("recipe", "run_root", "run_dir", "resume", "logger", "plugins")


@STAGES.register("retriever")
class RetrieverStage(Stage):
    """Train a retriever recipe (``model.retriever_recipe`` + ``model.retriever_overrides``, on the run's dataset)
    and export its top-``model.retriever_k`` candidates for train / val / test (``candidates.npz``, the format of
    ``zoo.data.candidates``); its run directory (``run/``: best checkpoint, config, metrics) is kept, so a method
    that needs the trained model itself (Laser's frozen SASRec) reads it from here."""

    name = "retriever"
    version = 1

    def retriever_config(self, cfg: DictConfig) -> DictConfig:
        from zoo.config import compose

        m = cfg.model
        recipe = m.get("retriever_recipe") or f"sasrec_{cfg.data.name}"
        overrides = [
            f"data.name={cfg.data.name}",
            f"seed={cfg.seed}",
            f"model.export_candidates_k={int(m.retriever_k)}",
            *list(m.get("retriever_overrides") or []),
        ]
        for key in ("root", "path", "titles", "k_core", "min_seq_len", "cache_dir"):
            value = cfg.data.get(key)
            if value is not None and value != 0:
                overrides.append(f"data.{key}={value}")
        sub = compose(recipe, overrides)
        if "export_candidates_k" not in sub.model:
            raise ConfigError(f"retriever recipe '{recipe}' is not a model that exports candidates")
        return sub

    def inputs(self, cfg, corpus):
        sub = plain(self.retriever_config(cfg))
        for key in RUN_SPECIFIC:
            sub.pop(key, None)
        sub.get("trainer", {}).pop("enable_progress_bar", None)
        return {"config": sub}

    def build(self, cfg, corpus, out, upstream):
        from zoo.run import run

        sub = self.retriever_config(cfg)
        sub.run_dir = str(out / "run")
        sub.trainer.enable_progress_bar = bool(cfg.trainer.enable_progress_bar)
        from zoo.progress import duration

        started = time.monotonic()
        metrics = run(sub, corpus=corpus)
        os.replace(out / "run" / "candidates.npz", out / "candidates.npz")
        k, took = int(sub.model.export_candidates_k), duration(time.monotonic() - started)
        log.info("stage retriever: %s trained and its top-%d lists exported in %s", sub.recipe, k, took)
        return {f"retriever/{k}": v for k, v in metrics.items() if k.startswith("test/")}


def _wants_gpu(cfg) -> bool:
    import torch

    accelerator = cfg.trainer.accelerator or ("cpu" if cfg.trainer.preset in ("cpu", "ddp_cpu") else "gpu")
    return accelerator in ("gpu", "cuda") and torch.cuda.is_available()
