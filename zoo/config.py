"""Recipes: plain YAML with ``base:`` inheritance, dotted ``key=value`` overrides, validated against a typed
schema. The ``model`` and ``loss`` sections are checked against the ``Config`` dataclass of the registered
model / loss they name, so every key of a recipe is known and typed."""

from __future__ import annotations

import importlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from zoo.errors import ConfigError
from zoo.registry import LOSSES, MODELS, SOURCES, allow_imports, nearest, populate

RECIPES_DIR = Path(os.environ.get("ZOO_RECIPES", Path(__file__).resolve().parent.parent / "recipes"))


@dataclass
class DataConfig:
    name: str = "ml100k"  # a registered source (``python -m zoo.run list``)
    root: Optional[str] = None  # data root; else $ZOO_DATA_DIR; else the user cache directory
    path: Optional[str] = None  # a file or folder, for sources that read one (atomic, seqfile, msl)
    titles: Optional[str] = None  # optional item-id -> title JSON (seqfile)
    download: bool = True  # fetch missing raw files from upstream when online
    cache: bool = True  # cache the processed corpus under <cache root>/corpora (see cache_dir)
    k_core: int = 0  # iterative k-core filter on raw interactions (0 = off)
    min_seq_len: int = 0  # drop users with fewer interactions (0 = keep all)
    max_len: int = 50  # history length of every example (most recent items): the one history length
    train_len: int = 0  # items of a sequence-mode training row (at least max_len; SASRec cuts longer rows in windows)
    batch_size: int = 256
    eval_batch_size: int = 512
    num_workers: int = 0
    eval_candidates: int = 0  # 0 = full ranking; n = target + (n-1) sampled negatives
    candidates_path: Optional[str] = None  # candidate lists written by a retriever (re-ranking methods)
    ctr_threshold: float = 3.0  # CTR view: label = rating > threshold
    ctr_split: str = "leave_one_out"  # CTR view: leave_one_out (per user, time order) | users (KAR: 9:1 users)
    ctr_prefix: int = 30  # ctr_split=users: the first min((len+1)//2, ctr_prefix) ratings are history only (KAR n_u)
    cache_dir: Optional[str] = None  # root of every cache (corpora, stages); else $ZOO_CACHE_DIR, else <root>/cache


@dataclass
class OptimConfig:
    name: str = "adam"  # adam | adamw | adagrad | sgd
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    scheduler: str = "none"  # none | inverse_sqrt | cosine | linear
    warmup_steps: int = 0
    # parameter-name prefix -> learning-rate multiplier (the longest matching prefix wins), e.g. {user_module: 10}
    lr_scale: dict[str, float] = field(default_factory=dict)


@dataclass
class TrainerConfig:
    preset: str = "cpu"  # cpu | ddp | ddp_cpu | fsdp  (fills the fields below that are left null)
    accelerator: Optional[str] = None
    devices: Optional[Any] = None
    strategy: Optional[str] = None
    precision: Optional[str] = None
    num_nodes: int = 1
    max_epochs: int = 50
    max_steps: int = -1
    max_time: Optional[str] = None  # "DD:HH:MM:SS"
    gradient_clip_val: Optional[float] = None
    accumulate_grad_batches: int = 1
    check_val_every_n_epoch: int = 1
    # batch limits: a fraction < 1 of the batches, or a whole number of batches; null = all
    limit_train_batches: Optional[float] = None
    limit_val_batches: Optional[float] = None
    limit_test_batches: Optional[float] = None
    log_every_n_steps: int = 50
    enable_progress_bar: bool = True
    deterministic: bool = False
    monitor: Optional[str] = None  # null = the task family's default (val/ndcg@10 ranking, val/auc CTR)
    monitor_mode: Optional[str] = None  # max | min (null = the family's); recorded as applied in config.yaml
    early_stopping_patience: int = 10  # validations without improvement; 0 = off


@dataclass
class EvalConfig:
    ks: list[int] = field(default_factory=lambda: [5, 10, 20])
    mask_seen: bool = False  # off, as in the S3-Rec / P5 / TIGER protocol
    item_chunk_size: int = 0  # score items in chunks of this size (0 = all at once)
    num_beams: int = 20  # generative methods
    # generative methods: beam scores renormalised over the tokens the item trie allows at each step (the item's
    # probability among real items, as MSL trains it) instead of the full vocabulary's log-softmax
    renormalize: bool = False
    # models with a scorer of their own beside their decoder (``RecModel.has_item_prior``: UEM's alignment term, its
    # genre head): each item's beam score (each genre answer's score) plus this weight times that scorer's
    # log-probability (log-odds for genres); 0 = the decoder's score alone
    prior_weight: float = 0.0
    # models whose scorer gives each label its own log-odds (``RecModel.prior_offsets``: uem_genres' genre head):
    # added to every log-odds before the weight, a shift of the decision threshold (p > 0.5 at 0); 0 = none
    prior_offset: float = 0.0
    save_ranks: bool = False  # write each test example's user, target and rank to <run_dir>/test_ranks.npz


@dataclass
class LoggerConfig:
    name: str = "csv"  # csv | tensorboard | wandb | none
    project: str = "zoo"
    group: Optional[str] = None
    offline: bool = True  # wandb: offline unless the user turns this off


@dataclass
class ZooConfig:
    recipe: str = ""
    plugins: list[str] = field(default_factory=list)  # modules imported first (they register their own components)
    seed: int = 42
    run_root: str = "runs"
    run_dir: Optional[str] = None  # set to reuse an existing directory
    resume: Optional[str] = None  # a run directory (its last.ckpt) or a checkpoint path
    train: bool = True  # false: evaluate only
    data: DataConfig = field(default_factory=DataConfig)
    model: Any = None
    loss: Any = None
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def _recipe_path(name: str) -> Path:
    """A recipe of the recipes folder by name (``sasrec_ml100k``, ``_base/default``), or a YAML file by path."""
    path = RECIPES_DIR / f"{name}.yaml"
    if not name.endswith((".yaml", ".yml")) and path.is_file():
        return path
    given = Path(name).expanduser()
    if given.suffix in (".yaml", ".yml") or os.sep in name or "/" in name:
        for candidate in (given, given.with_name(given.name + ".yaml")):
            if candidate.is_dir():
                raise ConfigError(f"recipe {candidate}: is a directory, expected a YAML file")
            if candidate.is_file():
                return candidate
    raise ConfigError(f"unknown recipe '{name}'; nearest: {nearest(name, recipe_names())}")


def recipe_stem(name: str) -> str:
    """The recipe's name in the run directory path: the file stem only, reduced to ``[A-Za-z0-9._-]`` so that a
    recipe given by path (``/some/where/x.yaml``, ``../../x``) can never place a run outside ``run_root``."""
    stem = Path(name).name
    for suffix in (".yaml", ".yml"):
        stem = stem.removesuffix(suffix)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._")
    return stem or "recipe"


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (PyYAML silently keeps the last)."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key '{key}' (first on line {seen[key] + 1})", key_node.start_mark
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def read_yaml(path: Path):
    """Parse one YAML file (a UTF-8 BOM is ignored); ConfigError naming the file on bad YAML or a repeated key."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read the recipe ({err})") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        if "duplicate key" in str(problem):
            raise ConfigError(f"{where}: {problem}") from None
        raise ConfigError(f"{where}: not valid YAML: {problem}") from None


def _recipe_chain(name: str, _seen: tuple[str, ...] = ()) -> list[tuple[Path, dict]]:
    """``(file, keys without base:)`` of a recipe and of every recipe in its ``base:`` chain, in merge order
    (bases first, depth first, the recipe itself last)."""
    if name in _seen:
        raise ConfigError(f"recipe inheritance cycle: {' -> '.join(_seen + (name,))}")
    path = _recipe_path(name)
    data = read_yaml(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of keys")
    bases = data.pop("base", []) or []
    bases = [bases] if isinstance(bases, str) else bases
    chain = [link for base in bases for link in _recipe_chain(base, _seen + (name,))]
    return chain + [(path, data)]


def load_recipe(name: str) -> dict:
    """Read a recipe and its ``base:`` chain (later bases and the recipe itself win)."""
    merged = OmegaConf.create()
    for _, data in _recipe_chain(name):
        merged = OmegaConf.merge(merged, data)
    return OmegaConf.to_container(merged)


def recipe_files(name: str) -> list[Path]:
    """The file of a recipe and of every recipe in its ``base:`` chain (a base shared twice, once)."""
    return list(dict.fromkeys(path for path, _ in _recipe_chain(name)))


def _parse_overrides(overrides: list[str]) -> DictConfig:
    for item in overrides:
        key, sep, _ = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{item}' must look like dotted.key=value")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as err:
        raise ConfigError(f"cannot parse overrides: {err}") from None


def _section_schema(registry, section: Any, what: str) -> DictConfig:
    name = (section or {}).get("name") if isinstance(section, (dict, DictConfig)) else None
    if not name:
        raise ConfigError(f"the recipe needs {what}.name (one of: {', '.join(registry.names())})")
    cls = registry.get(name)
    config_cls = getattr(cls, "Config", None)
    if config_cls is None:
        raise ConfigError(f"{what} '{name}' has no Config dataclass")
    return OmegaConf.structured(config_cls)


def _explain(err: OmegaConfBaseException) -> str:
    key = getattr(err, "full_key", None) or getattr(err, "key", None) or "?"
    if isinstance(err, ConfigKeyError):
        parent = getattr(err, "parent_node", None) or getattr(err, "object_type", None)
        valid: list[str] = []
        if isinstance(parent, DictConfig):
            valid = [str(k) for k in parent.keys()]
        leaf = str(key).split(".")[-1]
        hint = f"; nearest: {nearest(leaf, valid)}" if valid else ""
        return f"unknown key '{key}'{hint}"
    if isinstance(err, ValidationError):
        msg = str(err).splitlines()[0]
        return f"wrong type for '{key}': {msg}"
    return f"invalid config at '{key}': {str(err).splitlines()[0]}"


def config_schema(model: Any, loss: Any) -> DictConfig:
    """The typed schema of a config whose ``model`` and ``loss`` sections name these (registered) classes: every
    key at its default. Struct: an unknown key is an error."""
    populate()
    schema = OmegaConf.structured(ZooConfig)
    OmegaConf.set_struct(schema, False)
    schema.model = _section_schema(MODELS, model, "model")
    schema.loss = _section_schema(LOSSES, loss, "loss")
    OmegaConf.set_struct(schema, True)
    return schema


def compose(recipe: str, overrides: list[str] | None = None) -> DictConfig:
    """Load ``recipe``, apply ``overrides`` and return the validated, fully typed config."""
    raw = OmegaConf.create(load_recipe(recipe))
    over = _parse_overrides(overrides or [])
    names = OmegaConf.to_container(OmegaConf.merge(raw, over))  # which model / loss the schema must describe
    populate()
    plugins = [str(m) for m in names.get("plugins") or []]
    allow_imports(plugins)  # the recipe's plugins (and their submodules) may be named as "module:Object"
    for module in plugins:
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise ConfigError(f"cannot import plugin '{module}': {err}") from None
    schema = config_schema(names.get("model"), names.get("loss"))
    OmegaConf.set_struct(schema.optim.lr_scale, False)  # its keys are parameter-name prefixes, not schema fields
    for layer in (raw, over):
        try:
            schema = OmegaConf.merge(schema, layer)
        except OmegaConfBaseException as err:
            raise ConfigError(_explain(err)) from None
    schema.recipe = recipe_stem(recipe)
    _check_choices(schema)
    from zoo.validate import check_monitor, check_values

    check_values(schema)
    check_monitor(schema, MODELS.get(schema.model.name))
    return schema


CHOICES = {
    "trainer.preset": ("cpu", "ddp", "ddp_cpu", "fsdp"),
    "trainer.monitor_mode": ("max", "min", None),
    "logger.name": ("csv", "tensorboard", "wandb", "none"),
    "optim.name": ("adam", "adamw", "adagrad", "sgd"),
    "optim.scheduler": ("none", "inverse_sqrt", "cosine", "linear"),
}


def check_prior(model_cls, cfg: DictConfig) -> None:
    """``eval.prior_weight``: >= 0, and above 0 only for a model with its own item scorer; ``eval.prior_offset``
    only beside it, for a model whose scorer gives per-label log-odds."""
    weight = float(OmegaConf.select(cfg, "eval.prior_weight", default=0.0) or 0.0)
    if weight < 0:
        raise ConfigError(f"eval.prior_weight must be >= 0, got {weight}")
    if weight and not getattr(model_cls, "has_item_prior", lambda cfg: False)(cfg):
        raise ConfigError(
            f"eval.prior_weight={weight}: model '{cfg.model.name}' has no item scorer of its own under this config "
            "(uem and uem_genres have one with model.align_weight > 0)"
        )
    offset = float(OmegaConf.select(cfg, "eval.prior_offset", default=0.0) or 0.0)
    if offset and not (weight and getattr(model_cls, "prior_offsets", False)):
        raise ConfigError(
            f"eval.prior_offset={offset}: only a model whose prior is per-label log-odds (uem_genres' genre head) "
            "takes an offset, and only with eval.prior_weight > 0"
        )


def _check_choices(cfg: DictConfig) -> None:
    """Fail at compose time, not mid-run, on a name that is not one of the valid choices."""
    for key, valid in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in valid:
            raise ConfigError(f"invalid {key}={value!r}; valid: {', '.join(str(v) for v in valid if v is not None)}")
    SOURCES.get(cfg.data.name)
    model_cls = MODELS.get(cfg.model.name)
    getattr(model_cls, "check_config", lambda cfg: None)(cfg)  # zoo.models.base.RecModel.check_config
    check_prior(model_cls, cfg)
    loss_kind = getattr(model_cls, "loss_kind", "none")
    kind = LOSSES.get(cfg.loss.name).kind
    if loss_kind != "none" and kind != loss_kind:
        same = [n for n in LOSSES.names() if LOSSES.get(n).kind == loss_kind]
        raise ConfigError(
            f"loss '{cfg.loss.name}' is a {kind} loss; model '{cfg.model.name}' needs a {loss_kind} loss: "
            + ", ".join(same)
        )
