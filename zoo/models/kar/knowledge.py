"""KAR's knowledge, as two stages (``zoo.stages``):

* ``kar_knowledge``: factorization prompting (the scenario factors of ``zoo/data/templates/kar_<domain>.yaml``,
  data, not code). One preference-reasoning prompt per user from the profile and the user's **first n_u ratings
  only** (``zoo.data.ctr.knowledge_lengths``: KAR's ``n_u`` rule; every CTR example of the user starts at index
  n_u, so no rating at or after the first target is in the prompt), one factual prompt per item. Generated
  through ``zoo.llm_text`` (the offline ``smollm2-135m`` by default, any HF causal LM, or an OpenAI-compatible
  endpoint with ``model.kar_backend=http``), batched, cached per prompt in a JSONL file next to the stage
  artifacts (so a killed build resumes where it stopped), with progress and tokens/s. Greedy decoding of a small
  model loops ("Adventure, Adventure, ..."): ``kar_repetition_penalty`` and ``kar_no_repeat_ngram`` are applied
  and are part of the cache key (and of the text cache's file name).
* ``kar_vectors``: a frozen text encoder (``model.kar_encoder``: the bundled all-MiniLM-L6-v2, or any HF encoder)
  with masked mean pooling of the last hidden states; the user text is the prompt's history part + ". " + the
  answer (as the official ``lm_encoding.py``), the item text the answer alone. ``user_vectors.npy`` [U, d] and
  ``item_vectors.npy`` [N+1, d] (row 0 = padding, zeros). Encoded once here; a model only reads the arrays.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import yaml

from zoo.data.corpus import Corpus
from zoo.errors import ConfigError, DataError
from zoo.io import write_json_atomic
from zoo.llm_text import HFTextGenerator, HTTPChatGenerator, generate_cached
from zoo.stages import STAGES, Stage, stage_root

log = logging.getLogger(__name__)
TEMPLATES = Path(__file__).resolve().parents[2] / "data" / "templates"
TOWERS = ("both", "reasoning", "fact")


@dataclass
class KARConfig:
    """KAR fields mixed into every CTR backbone's ``Config`` (``model.kar=false``: the backbone alone)."""

    kar: bool = False  # inject KAR's knowledge vectors (extra fields; DIN: concatenation)
    kar_towers: str = "both"  # both | reasoning (user knowledge only) | fact (item knowledge only)
    kar_adaptor: str = "hybrid"  # hybrid (HEA) | single_gate_moe | mlp
    kar_hidden: int = 128  # expert MLP: knowledge dim -> kar_hidden -> embed_dim
    kar_shared: int = 2  # shared experts (the official export_num)
    kar_specific: int = 6  # dedicated experts per tower (specific_export_num)
    kar_domain: str = "movies"  # zoo/data/templates/kar_<domain>.yaml: movies | beauty | toys | a new file
    kar_backend: str = "hf"  # hf (a local causal LM) | http (an OpenAI-compatible endpoint)
    kar_llm: str = "smollm2-135m"  # hf: tiny-llama | smollm2-135m | HF name | folder | .gguf; http: model name
    kar_base_url: Optional[str] = None  # http only
    kar_api_key_env: Optional[str] = None  # http only: name of the environment variable holding the key
    kar_concurrency: int = 8  # http only: requests in flight
    kar_max_new_tokens: int = 128
    kar_repetition_penalty: float = 1.3  # hf: > 1 discourages repeats (greedy decoding of small models loops)
    kar_no_repeat_ngram: int = 3  # hf: no n-gram of this size twice (0 = off)
    kar_batch_size: int = 16  # hf: prompts per generate call
    # a folder of texts generated elsewhere with the same settings (files named like the text cache,
    # <dataset>-<settings digest>.jsonl, e.g. benchmarks/knowledge/): records of the same prompt are taken from it
    kar_texts_dir: Optional[str] = None
    kar_encoder: str = "all-MiniLM-L6-v2"  # bundled offline; or any HF encoder name / folder
    kar_encode_batch: int = 64
    kar_max_text_tokens: int = 512  # encoder truncation


def load_domain(name: str) -> dict:
    path = TEMPLATES / f"kar_{name}.yaml"
    if not path.is_file():
        have = sorted(p.stem[4:] for p in TEMPLATES.glob("kar_*.yaml"))
        raise ConfigError(f"unknown model.kar_domain '{name}' (have: {', '.join(have)})")
    spec = yaml.safe_load(path.read_text())
    missing = [
        k for k in ("user_prompt", "item_prompt", "user_factors", "item_factors", "history_item") if k not in spec
    ]
    if missing:
        raise ConfigError(f"{path.name}: missing '{missing[0]}'")
    return spec


def _rating(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _profile(spec: dict, corpus: Corpus, user: int) -> str | None:
    """The profile phrase of ``user`` when the corpus has every field the domain's profile names."""
    import string

    template = spec.get("profile") or ""
    fields = [f for _, f, _, _ in string.Formatter().parse(template) if f]
    if not template or any(f not in corpus.user_features for f in fields):
        return None
    values = {f: corpus.user_features[f][user] for f in fields}
    if "gender" in values:
        values["gender"] = (spec.get("genders") or {}).get(values["gender"], values["gender"])
    return template.format(**values)


def user_prompts(corpus: Corpus, spec: dict, prefix: int) -> tuple[list[str], list[str], list[str]]:
    """(raw user ids, prompts, history parts) from each user's first ``n_u`` ratings (``knowledge_lengths``)."""
    from zoo.data.ctr import knowledge_lengths
    from zoo.modules.title_trie import clean_title

    titles = corpus.item_text.get("title")
    if not titles:
        raise DataError(f"{corpus.name}: KAR's prompts need item titles")
    if corpus.ratings is None:
        raise DataError(f"{corpus.name}: KAR's user prompts need ratings")
    cut = knowledge_lengths(corpus, prefix)
    factors = ", ".join(spec["user_factors"])
    keys, prompts, histories = [], [], []
    for user in range(corpus.num_users):
        start = int(corpus.offsets[user])
        items = corpus.items[start : start + int(cut[user])].tolist()
        ratings = corpus.ratings[start : start + int(cut[user])].tolist()
        history = "".join(
            spec["history_item"].format(title=clean_title(titles[i], i), rating=_rating(r))
            for i, r in zip(items, ratings)
        )
        profile = _profile(spec, corpus, user)
        template = spec["user_prompt"] if profile else spec.get("user_prompt_anonymous", spec["user_prompt"])
        keys.append(str(corpus.user_ids[user]))
        prompts.append(template.format(profile=profile or "", history=history, factors=factors))
        histories.append(history.rstrip().rstrip(";"))
    return keys, prompts, histories


def item_prompts(corpus: Corpus, spec: dict) -> tuple[list[str], list[str]]:
    from zoo.modules.title_trie import clean_title

    titles = corpus.item_text.get("title")
    if not titles:
        raise DataError(f"{corpus.name}: KAR's prompts need item titles")
    factors = ", ".join(spec["item_factors"])
    keys = [str(corpus.item_ids[i]) for i in range(1, corpus.num_items + 1)]
    prompts = [
        spec["item_prompt"].format(title=clean_title(titles[i], i), factors=factors)
        for i in range(1, corpus.num_items + 1)
    ]
    return keys, prompts


class PenalizedHFGenerator(HFTextGenerator):
    """``HFTextGenerator`` with KAR's defaults: repetition penalty 1.3 and no repeated 3-grams (greedy decoding of a
    135M model otherwise repeats one phrase to the token limit)."""

    def __init__(self, llm_cfg, max_new_tokens: int = 128, repetition_penalty: float = 1.3, no_repeat_ngram: int = 3):
        super().__init__(llm_cfg, max_new_tokens, repetition_penalty, no_repeat_ngram)


def generation_settings(m) -> dict:
    """What changes the generated text: the cache key of the stage and of the JSONL text cache."""
    out = {"backend": m.kar_backend, "llm": m.kar_llm, "max_new_tokens": int(m.kar_max_new_tokens)}
    if m.kar_backend == "hf":
        out.update(repetition_penalty=float(m.kar_repetition_penalty), no_repeat_ngram=int(m.kar_no_repeat_ngram))
    elif m.kar_backend == "http":
        out.update(base_url=m.kar_base_url)
    else:
        raise ConfigError(f"unknown model.kar_backend '{m.kar_backend}' (hf | http)")
    return out


def build_generator(m):
    if m.kar_backend == "http":
        if not m.kar_base_url:
            raise ConfigError("model.kar_backend=http needs model.kar_base_url (e.g. http://localhost:8000/v1)")
        return HTTPChatGenerator(
            m.kar_base_url,
            m.kar_llm,
            m.kar_api_key_env,
            max_tokens=int(m.kar_max_new_tokens),
            concurrency=int(m.kar_concurrency),
        )
    if m.kar_backend != "hf":
        raise ConfigError(f"unknown model.kar_backend '{m.kar_backend}' (hf | http)")
    from omegaconf import OmegaConf

    from zoo.modules.llm import LLMConfig

    llm = OmegaConf.structured(LLMConfig(backbone=m.kar_llm))
    return PenalizedHFGenerator(llm, int(m.kar_max_new_tokens), m.kar_repetition_penalty, m.kar_no_repeat_ngram)


def _digest(blob) -> str:
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:12]


@STAGES.register("kar_knowledge")
class KARKnowledgeStage(Stage):
    """User reasoning and item factual knowledge (``knowledge.json``: ``{"users"|"items": {raw id: {"prompt",
    "text"}}, "user_history": {raw id: history part}}``)."""

    name = "kar_knowledge"
    version = 1
    users = True  # the user reasoning prompts too (the CTR task's n_u rule); the item-only stage has none

    def inputs(self, cfg, corpus):
        m = cfg.model
        out = {"domain": load_domain(m.kar_domain), "generation": generation_settings(m)}
        if self.users:
            out["prefix"] = int(cfg.data.ctr_prefix)
        return out

    def build(self, cfg, corpus, out, upstream):
        m = cfg.model
        spec = load_domain(m.kar_domain)
        settings = generation_settings(m)
        user_keys, user_texts, histories = (
            user_prompts(corpus, spec, int(cfg.data.ctr_prefix)) if self.users else ([], [], [])
        )
        item_keys, item_texts = item_prompts(corpus, spec)
        # a cache outside the artifact's temporary folder: a killed build resumes from it (shared by the item-only
        # stage: the same prompt under the same settings is generated once)
        cache = stage_root(cfg) / "kar_knowledge" / "texts" / f"{corpus.name}-{_digest(settings)}.jsonl"
        generator = build_generator(m)
        keys = [f"user:{k}" for k in user_keys] + [f"item:{k}" for k in item_keys]
        prompts = user_texts + item_texts
        started, tokens = time.monotonic(), getattr(generator, "generated_tokens", 0)
        shipped = Path(m.kar_texts_dir) / cache.name if m.kar_texts_dir else None
        if shipped is not None and not shipped.is_file():
            log.info("no generated texts for these settings in %s (%s): generating them", m.kar_texts_dir, cache.name)
            shipped = None
        texts = generate_cached(
            keys, prompts, generator, cache, batch_size=int(m.kar_batch_size), progress=True, reuse=shipped
        )
        took = time.monotonic() - started
        record = {
            "settings": settings,
            "users": {k: {"prompt": p, "text": texts[f"user:{k}"]} for k, p in zip(user_keys, user_texts)},
            "items": {k: {"prompt": p, "text": texts[f"item:{k}"]} for k, p in zip(item_keys, item_texts)},
            "user_history": dict(zip(user_keys, histories)),
        }
        write_json_atomic(out / "knowledge.json", record)
        new_tokens = getattr(generator, "generated_tokens", 0) - tokens
        return {
            "kar_knowledge/users": len(user_keys),
            "kar_knowledge/items": len(item_keys),
            "kar_knowledge/generate_s": round(took, 3),
            "kar_knowledge/new_tokens": new_tokens,
        }


@STAGES.register("kar_item_knowledge")
class KARItemKnowledgeStage(KARKnowledgeStage):
    """Item factual knowledge only (the same prompts, settings and text cache as ``kar_knowledge``): what item
    side information needs (the sequential variant, ``zoo.models.sasrec_kar``), without a CTR split or user
    prompts; ``knowledge.json`` has empty ``users`` and ``user_history``."""

    name = "kar_item_knowledge"
    version = 1
    users = False


def load_knowledge(artifact) -> dict:
    return json.loads(artifact.file("knowledge.json").read_text(encoding="utf-8"))


def load_text_encoder(name: str, device: str = "cpu"):
    """(tokenizer, model) of a frozen HF encoder: the bundled all-MiniLM-L6-v2 folder for the default."""
    import os

    from zoo.modules.text_encoder import _DEFAULT_ALIASES, encoder_location

    location = encoder_location(name)
    if name in _DEFAULT_ALIASES:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(location)
        model = AutoModel.from_pretrained(location).to(device).eval()
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"cannot load text encoder '{name}': {first}") from None
    for p in model.parameters():
        p.requires_grad_(False)
    return tokenizer, model


def encode_texts(
    texts: Sequence[str], name: str, batch_size: int = 64, max_tokens: int = 512, device: str = "cpu"
) -> np.ndarray:
    """[len(texts), d] float32: masked mean of the encoder's last hidden states (padding left out)."""
    import torch

    from zoo.progress import Progress

    tokenizer, model = load_text_encoder(name, device)
    limit = min(int(max_tokens), int(getattr(model.config, "max_position_embeddings", max_tokens)))
    chunks = []
    with Progress(len(texts), "knowledge vectors", "texts", log) as progress, torch.no_grad():
        for start in range(0, len(texts), batch_size):
            part = list(texts[start : start + batch_size])
            enc = tokenizer(part, padding=True, truncation=True, max_length=limit, return_tensors="pt").to(device)
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            chunks.append(((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).float().cpu().numpy())
            progress.update(len(part))
    dim = int(model.config.hidden_size)
    return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros((0, dim), dtype=np.float32)


@STAGES.register("kar_vectors")
class KARVectorsStage(Stage):
    """``user_vectors.npy`` [U, d] (row = user index) and ``item_vectors.npy`` [N+1, d] (row 0 = padding)."""

    name = "kar_vectors"
    version = 1
    needs = ("kar_knowledge",)

    def inputs(self, cfg, corpus):
        return {"encoder": cfg.model.kar_encoder, "max_tokens": int(cfg.model.kar_max_text_tokens)}

    def build(self, cfg, corpus, out, upstream):
        from zoo.stages import _wants_gpu

        m = cfg.model
        knowledge = load_knowledge(upstream["kar_knowledge"])
        users = [str(u) for u in corpus.user_ids]
        items = [str(corpus.item_ids[i]) for i in range(1, corpus.num_items + 1)]
        user_text = [f"{knowledge['user_history'][u]}. {knowledge['users'][u]['text']}" for u in users]
        item_text = [knowledge["items"][i]["text"] for i in items]
        device = "cuda" if _wants_gpu(cfg) else "cpu"
        vectors = encode_texts(
            user_text + item_text, m.kar_encoder, int(m.kar_encode_batch), int(m.kar_max_text_tokens), device
        )
        user_vectors = vectors[: len(users)]
        item_vectors = np.concatenate([np.zeros((1, vectors.shape[1]), np.float32), vectors[len(users) :]])
        np.save(out / "user_vectors.npy", user_vectors)
        np.save(out / "item_vectors.npy", item_vectors)
        return {"kar_vectors/dim": vectors.shape[1]}


@STAGES.register("kar_item_vectors")
class KARItemVectorsStage(Stage):
    """``item_vectors.npy`` [N+1, d] (row 0 = padding, zeros) of the item-only knowledge, encoded as
    ``kar_vectors`` encodes items (the answer alone)."""

    name = "kar_item_vectors"
    version = 1
    needs = ("kar_item_knowledge",)

    def inputs(self, cfg, corpus):
        return {"encoder": cfg.model.kar_encoder, "max_tokens": int(cfg.model.kar_max_text_tokens)}

    def build(self, cfg, corpus, out, upstream):
        from zoo.stages import _wants_gpu

        m = cfg.model
        knowledge = load_knowledge(upstream["kar_item_knowledge"])
        items = [str(corpus.item_ids[i]) for i in range(1, corpus.num_items + 1)]
        texts = [knowledge["items"][i]["text"] for i in items]
        device = "cuda" if _wants_gpu(cfg) else "cpu"
        vectors = encode_texts(texts, m.kar_encoder, int(m.kar_encode_batch), int(m.kar_max_text_tokens), device)
        np.save(out / "item_vectors.npy", np.concatenate([np.zeros((1, vectors.shape[1]), np.float32), vectors]))
        return {"kar_item_vectors/dim": vectors.shape[1]}


def load_item_vectors(artifact) -> np.ndarray:
    return np.load(artifact.file("item_vectors.npy"))


def load_vectors(artifact) -> tuple[np.ndarray, np.ndarray]:
    return np.load(artifact.file("user_vectors.npy")), np.load(artifact.file("item_vectors.npy"))
