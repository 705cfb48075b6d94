"""The one builder: a composed config -> (model, datamodule). ``zoo.run``, every benchmark script and the tests
build through it, so the handshake lives here and nowhere else:

1. the model class and its task family (``zoo.tasks``) are looked up; the family fills what the config left
   null (``trainer.monitor``, ``trainer.monitor_mode``) and the lengths are resolved to the values that apply
   (``data.train_len``), so the run's config.yaml records what was applied;
2. the evaluation protocol (``zoo.evaluation.Protocol``) is read from the config and checked against the family;
3. the corpus is loaded (cached) unless given;
4. the stages the method names (``zoo.stages``) are resolved: reused from the cache or built;
5. the method may adjust the protocol to its artifacts (a re-ranker ranks its retriever's lists), recorded back
   into the config (``data.candidates_path``);
6. the family's DataModule is built with the protocol, the model with (cfg, datamodule, artifacts), the model's
   ``data_spec()`` is connected and its ``prepare(datamodule)`` runs.

Nothing travels back from the model into the DataModule after this.
"""

from __future__ import annotations

import sys

from omegaconf import DictConfig, open_dict

from zoo.config import check_prior
from zoo.data.corpus import Corpus
from zoo.errors import ConfigError
from zoo.evaluation import Protocol
from zoo.registry import MODELS
from zoo.tasks import Task, task_of


def apply_defaults(cfg: DictConfig, task: Task) -> None:
    """Fill the family's defaults and resolve lengths in place (what config.yaml then records)."""
    with open_dict(cfg):
        if cfg.trainer.monitor is None:
            cfg.trainer.monitor = task.monitor
        if cfg.trainer.monitor_mode is None:
            cfg.trainer.monitor_mode = task.monitor_mode
        if cfg.data.train_len < 0 or cfg.data.max_len < 1:
            raise ConfigError(
                f"data.max_len must be >= 1 and data.train_len >= 0, got {cfg.data.max_len} and {cfg.data.train_len}"
            )
        cfg.data.train_len = max(int(cfg.data.train_len), int(cfg.data.max_len))


def check_protocol(model_cls, task: Task, protocol: Protocol) -> None:
    name = getattr(model_cls, "__name__", str(model_cls))
    if not task.ranking and (protocol.candidates != "full" or protocol.mask_seen):
        raise ConfigError(f"{name} is a {task.name} model: the ranking protocol ({protocol.describe()}) does not apply")
    if task.name == "generative" and protocol.candidates != "full" and not model_cls.supports_candidates:
        raise ConfigError(f"{name} cannot restrict its ranked lists to candidates: use full ranking")


def build(cfg: DictConfig, corpus: Corpus | None = None, stages: dict | None = None):
    """Build ``(model, datamodule)`` for a composed config (see the module docstring). ``corpus`` skips loading
    the data (tests pass a synthetic one); ``stages`` receives the resolved artifacts by name when given."""
    from zoo.data.loading import load_corpus
    from zoo.stages import resolve

    model_cls = MODELS.get(cfg.model.name)
    getattr(model_cls, "check_config", lambda cfg: None)(cfg)  # again: a config edited after compose (benchmarks)
    check_prior(model_cls, cfg)
    task = task_of(model_cls)
    apply_defaults(cfg, task)
    protocol = Protocol.from_config(cfg)
    corpus = corpus if corpus is not None else load_corpus(cfg.data)
    artifacts: dict = {}
    for name in model_cls.stages_for(cfg):
        resolve(name, cfg, corpus, resolved=artifacts)
    protocol = model_cls.protocol_for(cfg, protocol, artifacts)
    check_protocol(model_cls, task, protocol)
    with open_dict(cfg):
        if protocol.candidates == "retriever" and protocol.candidates_path:
            cfg.data.candidates_path = protocol.candidates_path
    datamodule = task.datamodule(cfg, protocol, corpus)
    model = model_cls(cfg, datamodule, artifacts)
    datamodule.connect(model.data_spec())
    model.prepare(datamodule)
    if stages is not None:
        stages.update(artifacts)
    return model, datamodule


class _CallableModule(type(sys.modules[__name__])):
    """``zoo.build(cfg)`` works even where ``zoo.build`` is this module (once anything imported it)."""

    def __call__(self, *args, **kwargs):
        return build(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
