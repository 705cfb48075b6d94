"""LLM-written text (PALR's user profiles, item descriptions, KAR-style knowledge), generated once and cached.

Two backends, chosen by the caller:

* ``HFTextGenerator``: any Hugging Face causal LM by name or local path (``zoo.modules.llm``), greedy decoding,
  the tokenizer's chat template when it has one;
* ``HTTPChatGenerator``: any OpenAI-compatible server (``POST <base_url>/chat/completions``: vLLM, llama.cpp,
  Ollama, OpenAI...). The base URL, model name and the *name* of the environment variable holding the API key
  are configuration; nothing is hard-wired and the key itself is never stored. ``concurrency`` requests are in
  flight at once (a thread pool: a server batches concurrent requests, so one at a time leaves it idle).

``TextCache`` is a JSONL file with one record per key (``{"key", "text", "prompt_sha1"}``), appended and flushed
one record at a time (under a lock, so concurrent requests never interleave their lines), as each text arrives, so
an interrupted run resumes where it stopped: keys already there with the same prompt are not asked again; a record
whose prompt changed is regenerated (the last record of a key wins); a final line cut off by a crash is dropped on
the next load.

Command line (user profiles for PALR, from each user's training history only)::

    python -m zoo.llm_text profiles recipe=palr_ml100k out=profiles.jsonl backend=http \\
        base_url=http://localhost:8000/v1 model=meta-llama/Llama-3.1-8B-Instruct api_key_env=OPENAI_API_KEY \\
        concurrency=8

(``concurrency=`` requests in flight, default 8; ``backend=hf model=<name, folder or .gguf>`` runs a local
model instead, batched (``batch_size=``, default 8) with a KV cache, e.g. ``backend=hf model=smollm2-135m``
offline. Both show progress with texts/s, ETA and tokens/s (``zoo.progress``; ``log_level=WARNING`` or ``-q``
hides it); dotted ``key=value`` arguments override the recipe, e.g. ``data.name=ml1m``.)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from zoo.errors import ConfigError, DataError, ZooError
from zoo.io import write_text_atomic

log = logging.getLogger(__name__)


class TextGenerationError(ZooError):
    """The text backend failed (unreachable server, HTTP error, malformed answer)."""


class TextGenerator(Protocol):
    def generate(self, prompts: Sequence[str]) -> list[str]:
        """One completion per prompt."""


@dataclass
class HTTPChatGenerator:
    """An OpenAI-compatible ``/chat/completions`` endpoint."""

    base_url: str  # e.g. http://localhost:8000/v1
    model: str
    api_key_env: str | None = None  # name of the environment variable with the key (none: no Authorization)
    system_prompt: str | None = None
    max_tokens: int = 256
    temperature: float = 0.0
    timeout_s: float = 120.0
    retries: int = 3  # on connection errors, 429 and 5xx, with exponential back-off
    backoff_s: float = 1.0
    concurrency: int = 1  # requests in flight at once
    generated_tokens: int = 0  # completion tokens the server reported (``usage.completion_tokens``), for tokens/s

    def __post_init__(self) -> None:
        if int(self.concurrency) < 1:
            raise ConfigError(f"concurrency must be >= 1, got {self.concurrency}")
        self._lock = threading.Lock()

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise ConfigError(f"environment variable {self.api_key_env} (the API key) is not set")
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _complete(self, prompt: str) -> str:
        messages = ([{"role": "system", "content": self.system_prompt}] if self.system_prompt else []) + [
            {"role": "user", "content": prompt}
        ]
        body = json.dumps(
            {"model": self.model, "messages": messages, "max_tokens": self.max_tokens, "temperature": self.temperature}
        ).encode()
        url = self.base_url.rstrip("/") + "/chat/completions"
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(url, data=body, headers=self._headers(), method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    answer = json.loads(response.read().decode("utf-8"))
                text = str(answer["choices"][0]["message"]["content"])
                tokens = (answer.get("usage") or {}).get("completion_tokens")
                if isinstance(tokens, int):
                    with self._lock:
                        self.generated_tokens += tokens
                return text
            except urllib.error.HTTPError as err:
                retry = err.code == 429 or err.code >= 500
                problem = f"HTTP {err.code} from {url}"
            except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
                retry, problem = True, f"cannot reach {url}: {getattr(err, 'reason', err)}"
            except (json.JSONDecodeError, KeyError, IndexError, TypeError):
                retry, problem = False, f"{url} did not answer with a chat completion (choices[0].message.content)"
            if not retry or attempt == self.retries:
                raise TextGenerationError(problem)
            time.sleep(self.backoff_s * 2**attempt)
        raise AssertionError("unreachable")

    def generate(self, prompts: Sequence[str]) -> list[str]:
        """One completion per prompt, in the order of ``prompts``, ``concurrency`` requests at a time."""
        texts: list[str | None] = [None] * len(prompts)
        for index, text in self.stream(prompts):
            texts[index] = text
        return texts  # type: ignore[return-value]

    def stream(self, prompts: Sequence[str]) -> Iterator[tuple[int, str]]:
        """``(index, text)`` as each answer arrives, with up to ``concurrency`` requests in flight. The first
        failure cancels the requests not yet sent; the answers of those in flight still arrive, then it is raised."""
        if self.concurrency == 1 or len(prompts) <= 1:
            for index, prompt in enumerate(prompts):
                yield index, self._complete(prompt)
            return
        pool = ThreadPoolExecutor(max_workers=min(int(self.concurrency), len(prompts)), thread_name_prefix="llm")
        failure: BaseException | None = None
        try:
            pending = {pool.submit(self._complete, prompt): index for index, prompt in enumerate(prompts)}
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    index = pending.pop(future)
                    if future.cancelled():
                        continue
                    if future.exception() is not None:
                        failure = failure or future.exception()
                        for other in pending:
                            other.cancel()  # not sent yet: never sent
                        continue
                    yield index, future.result()
        finally:  # an interrupt (or the caller stopping): send nothing more
            pool.shutdown(wait=True, cancel_futures=True)
        if failure is not None:
            raise failure


class HFTextGenerator:
    """Batched greedy generation with a local causal LM (``zoo.modules.llm.LLMConfig`` names it: a Hugging Face
    name or folder, a GGUF file, or ``smollm2-135m`` offline), left-padded prompts and the model's KV cache
    (``generate``), the tokenizer's chat template when it has one. ``generated_tokens`` counts the new tokens
    (up to and including EOS) for throughput reports. ``repetition_penalty`` (1.0: none) and ``no_repeat_ngram``
    (0: none) keep a small model's greedy decoding from repeating one phrase to the token limit (KAR's knowledge
    stage sets them and keeps them in its cache key)."""

    def __init__(
        self, llm_cfg, max_new_tokens: int = 128, repetition_penalty: float = 1.0, no_repeat_ngram: int = 0
    ) -> None:
        from zoo.modules.llm import CausalLMBackbone

        # batched by ``generate_cached(batch_size=...)``: one left-padded batch per ``generate`` call
        self.backbone = CausalLMBackbone(llm_cfg).eval()
        self.max_new_tokens = max_new_tokens
        self.repetition_penalty, self.no_repeat_ngram = float(repetition_penalty), int(no_repeat_ngram)
        self.generated_tokens = 0

    def _text(self, prompt: str) -> str:
        tok = self.backbone.tokenizer
        if getattr(tok, "chat_template", None):
            return tok.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
            )
        return prompt

    def generate(self, prompts: Sequence[str]) -> list[str]:
        import torch

        from zoo.data.prompts import pack_left

        tok = self.backbone.tokenizer
        ids = [list(tok(self._text(p), add_special_tokens=False)["input_ids"]) for p in prompts]
        batch = pack_left(ids, None, self.backbone.pad_token_id)
        model = self.backbone.model
        device = next(model.parameters()).device
        extra = {"repetition_penalty": self.repetition_penalty} if self.repetition_penalty != 1.0 else {}
        if self.no_repeat_ngram > 0:
            extra["no_repeat_ngram_size"] = self.no_repeat_ngram
        with torch.no_grad():
            out = model.generate(
                input_ids=batch.input_ids.to(device),
                attention_mask=batch.attention_mask.to(device),
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                use_cache=True,
                eos_token_id=self.backbone.eos_token_id,
                pad_token_id=self.backbone.pad_token_id,
                **extra,
            )
        new = out[:, batch.input_ids.shape[1] :].cpu()
        ended = new == self.backbone.eos_token_id
        after_eos = (ended.long().cumsum(dim=1) - ended.long()) > 0  # positions after a row's first EOS
        self.generated_tokens += int((~after_eos).sum())
        return [tok.decode(row, skip_special_tokens=True).strip() for row in new]


def prompt_sha1(prompt: str) -> str:
    return hashlib.sha1(prompt.encode("utf-8")).hexdigest()


class TextCache:
    """key -> generated text, persisted as JSONL appended one flushed record at a time (thread-safe)."""

    def __init__(self, path: str | Path, read_only: bool = False) -> None:
        self.path, self.read_only = Path(path), read_only
        self.records: dict[str, dict] = {}
        self._lock = threading.Lock()
        if self.path.is_file():
            self._load()

    def _load(self) -> None:
        raw = self.path.read_text(encoding="utf-8")
        lines = raw.split("\n")
        complete = raw.endswith("\n")
        for lineno, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                self.records[str(record["key"])] = {"text": str(record["text"]), "sha1": record.get("prompt_sha1")}
            except (json.JSONDecodeError, KeyError, TypeError):
                if lineno == len(lines) and not complete:  # cut off by an interrupted write: drop it
                    if self.read_only:
                        return
                    write_text_atomic(self.path, "\n".join(lines[:-1]) + ("\n" if len(lines) > 1 else ""))
                    return
                raise DataError(f"{self.path}:{lineno}: expected a JSON object with 'key' and 'text'") from None
        if raw and not complete and not self.read_only:  # a valid last record without its newline: complete it
            with self.path.open("a", encoding="utf-8") as f:
                f.write("\n")

    def get(self, key: str, prompt: str | None = None) -> str | None:
        """The cached text, or None when absent or generated from another prompt."""
        record = self.records.get(key)
        if record is None or (prompt is not None and record["sha1"] not in (None, prompt_sha1(prompt))):
            return None
        return record["text"]

    def append(self, key: str, text: str, prompt: str | None = None) -> None:
        if self.read_only:
            raise RuntimeError(f"{self.path} is read-only here")
        record = {"key": key, "text": text, "prompt_sha1": prompt_sha1(prompt) if prompt is not None else None}
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock:  # one whole line per record, whichever thread writes it
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
            self.records[key] = {"text": text, "sha1": record["prompt_sha1"]}


def generate_cached(
    keys: Sequence[str],
    prompts: Sequence[str],
    generator: TextGenerator,
    cache_path: str | Path,
    batch_size: int = 8,
    progress: bool = False,
    reuse: str | Path | None = None,
) -> dict[str, str]:
    """Text for every key, in the order of ``keys``: from the cache when present (same prompt), else generated
    and appended as it arrives: a generator with ``stream`` (the HTTP backend, ``concurrency`` requests in flight)
    text by text, others (the local model) in batches of ``batch_size``. ``progress`` logs the texts done, their
    rate and ETA and, when the backend counts them, the generated tokens per second (``zoo.progress``).

    ``reuse``: a read-only file of the same format (texts generated elsewhere with the same settings, e.g. shipped
    with a benchmark); its records whose prompt matches are copied into the cache instead of being generated, the
    rest are generated. It is never written."""
    if len(keys) != len(prompts):
        raise ValueError(f"{len(keys)} keys for {len(prompts)} prompts")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    from zoo.progress import Progress

    cache = TextCache(cache_path)
    if reuse is not None:
        if not Path(reuse).is_file():
            raise ConfigError(f"no generated-text file at {reuse}")
        shipped, copied = TextCache(reuse, read_only=True), 0
        for key, prompt in zip(keys, prompts):
            text = shipped.get(key, prompt) if shipped.records.get(key, {}).get("sha1") else None
            if text is not None and cache.get(key, prompt) is None:
                cache.append(key, text, prompt)
                copied += 1
        log.info("generated text: %d of %d taken from %s", copied, len(keys), reuse)
    todo = [(k, p) for k, p in zip(keys, prompts) if cache.get(k, p) is None]
    if len(todo) < len(keys):
        log.info("generated text: %d of %d reused from %s", len(keys) - len(todo), len(keys), cache.path)
    bar = Progress(len(todo), "generating", "text", log) if progress and todo else None
    started, tokens_before = time.monotonic(), getattr(generator, "generated_tokens", 0)

    def done(count: int) -> None:
        if bar is None:
            return
        tokens = getattr(generator, "generated_tokens", 0) - tokens_before
        rate = {"tokens_per_s": round(tokens / max(time.monotonic() - started, 1e-9), 1)} if tokens else {}
        bar.update(count, **rate)

    try:
        if hasattr(generator, "stream"):
            for index, text in generator.stream([p for _, p in todo]):
                key, prompt = todo[index]
                cache.append(key, text, prompt)
                done(1)
        else:
            # batches of similar lengths (longest first): less padding to run through the model, and a prompt that
            # does not fit in memory fails in the first batch; the cache is keyed by prompt, so order is free
            todo.sort(key=lambda kp: len(kp[1]), reverse=True)
            for start in range(0, len(todo), batch_size):
                chunk = todo[start : start + batch_size]
                texts = generator.generate([p for _, p in chunk])
                if len(texts) != len(chunk):
                    raise TextGenerationError(f"the generator returned {len(texts)} texts for {len(chunk)} prompts")
                for (key, prompt), text in zip(chunk, texts):
                    cache.append(key, text, prompt)
                done(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    return {k: cache.get(k) for k in keys}


PROFILE_PROMPT = (
    "Here are the {noun} a user interacted with, oldest first: {titles}.\n"
    "Describe this user's preferences as a short comma-separated list of keywords (genres, themes, styles). "
    "Answer with the keywords only."
)


def profile_prompts(corpus, max_history: int = 20, noun: str = "items") -> tuple[list[str], list[str]]:
    """(raw user ids, prompts) asking for each user's preference keywords from their **training** history
    (leave-one-out: the sequence without its last two items, which are the validation and test targets; sources
    with their own split: the corpus sequence, which holds no evaluation target)."""
    from zoo.modules.title_trie import clean_title

    titles = corpus.item_text.get("title")
    if not titles:
        raise DataError(f"{corpus.name}: user profiles need item titles")
    keys, prompts = [], []
    for user in range(corpus.num_users):
        sequence = corpus.sequence(user).tolist()
        history = sequence if corpus.fixed_splits else sequence[:-2]
        history = history[-max_history:]
        if not history:
            continue
        shown = ", ".join(f'"{clean_title(titles[i], i)}"' for i in history)
        keys.append(corpus.user_ids[user])
        prompts.append(PROFILE_PROMPT.format(noun=noun, titles=shown))
    return keys, prompts


def _parse(argv: list[str]) -> dict[str, str]:
    options = {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep:
            raise ConfigError(f"argument '{arg}' must look like key=value")
        options[key] = value
    return options


def _int(options: dict[str, str], key: str, default: int) -> int:
    try:
        value = int(options.get(key, default))
    except ValueError:
        raise ConfigError(f"{key}={options[key]}: expected a positive integer") from None
    if value < 1:
        raise ConfigError(f"{key}={value}: expected a positive integer")
    return value


def main(argv: list[str] | None = None) -> int:
    """``python -m zoo.llm_text profiles recipe=NAME out=FILE backend=http|hf ...`` (see the module docstring)."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] != "profiles":
        print(__doc__)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    try:
        from zoo.logs import setup_from_args

        options = _parse(setup_from_args(argv[1:]))
        overrides = [f"{k}={v}" for k, v in options.items() if "." in k]  # dotted keys override the recipe
        options = {k: v for k, v in options.items() if "." not in k}
        known = {
            "recipe",
            "out",
            "backend",
            "base_url",
            "model",
            "api_key_env",
            "max_tokens",
            "max_history",
            "noun",
            "batch_size",
            "concurrency",
        }
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(f"unknown option(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
        for required in ("recipe", "out", "backend", "model"):
            if required not in options:
                raise ConfigError(f"missing {required}=...")
        from zoo.config import compose
        from zoo.data.loading import load_corpus

        cfg = compose(options["recipe"], overrides)
        keys, prompts = profile_prompts(
            load_corpus(cfg.data), _int(options, "max_history", 20), options.get("noun", "items")
        )
        max_tokens = _int(options, "max_tokens", 128)
        if options["backend"] == "http":
            if "base_url" not in options:
                raise ConfigError("backend=http needs base_url=... (e.g. http://localhost:8000/v1)")
            generator = HTTPChatGenerator(
                options["base_url"],
                options["model"],
                options.get("api_key_env"),
                max_tokens=max_tokens,
                concurrency=_int(options, "concurrency", 8),
            )
        elif options["backend"] == "hf":
            from omegaconf import OmegaConf

            from zoo.modules.llm import LLMConfig

            generator = HFTextGenerator(OmegaConf.structured(LLMConfig(backbone=options["model"])), max_tokens)
        else:
            raise ConfigError(f"unknown backend '{options['backend']}' (http | hf)")
        batch_size = _int(options, "batch_size", 8)
        texts = generate_cached(keys, prompts, generator, options["out"], batch_size=batch_size, progress=True)
        print(f"{len(texts)} profiles in {options['out']}")
    except ZooError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
