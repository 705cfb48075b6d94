"""LLM-written text: the OpenAI-compatible HTTP backend against a local server on 127.0.0.1 (auth from an
environment variable, retries, errors), the resumable JSONL cache, the HF backend, and profile prompts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from omegaconf import OmegaConf

from zoo.data.corpus import Corpus
from zoo.errors import ConfigError, DataError
from zoo.llm_text import (
    PROFILE_PROMPT,
    HFTextGenerator,
    HTTPChatGenerator,
    TextCache,
    TextGenerationError,
    generate_cached,
    main,
    profile_prompts,
)
from zoo.modules.llm import LLMConfig


class ChatServer:
    """A minimal /v1/chat/completions: answers "echo: <user message>"; can fail the first N requests.
    ``delay`` (prompt -> seconds) holds an answer back, ``fail_on`` answers that prompt with HTTP 400;
    ``max_in_flight`` is the most requests it was serving at once."""

    def __init__(
        self, fail_first: int = 0, status: int = 500, body: bytes | None = None, delay=None, fail_on: str = ""
    ) -> None:
        self.requests: list[dict] = []
        self.auth: list[str | None] = []
        self.fail_left = fail_first
        self.in_flight = self.max_in_flight = 0
        lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server API)
                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    server.requests.append(payload)
                    server.auth.append(self.headers.get("Authorization"))
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:  # the request counts as in flight while it is worked on, not while its answer is written:
                    if delay is not None:  # a client sending one at a time never sees two
                        time.sleep(delay(payload["messages"][-1]["content"]))
                finally:
                    with lock:
                        server.in_flight -= 1
                self.answer(payload)

            def answer(self, payload: dict) -> None:
                if self.path != "/v1/chat/completions":
                    self.send_response(404)
                    self.end_headers()
                    return
                if payload["messages"][-1]["content"] == fail_on:  # a client error: not retried
                    self.send_response(400)
                    self.end_headers()
                    return
                if server.fail_left > 0:
                    server.fail_left -= 1
                    self.send_response(status)
                    self.end_headers()
                    return
                content = "echo: " + payload["messages"][-1]["content"]
                usage = {"completion_tokens": len(content.split())}
                message = {"choices": [{"message": {"role": "assistant", "content": content}}], "usage": usage}
                answer = body or json.dumps(message).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> ChatServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_http_backend_sends_chat_completions_with_the_key_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("ZOO_TEST_KEY", "secret-123")
    with ChatServer() as server:
        gen = HTTPChatGenerator(server.url, "my-model", api_key_env="ZOO_TEST_KEY", system_prompt="be brief")
        assert gen.generate(["hello", "world"]) == ["echo: hello", "echo: world"]
    first = server.requests[0]
    assert first["model"] == "my-model" and first["temperature"] == 0.0
    assert first["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    assert server.auth == ["Bearer secret-123"] * 2


def test_http_backend_retries_server_errors_and_reports_failures(monkeypatch) -> None:
    with ChatServer(fail_first=2, status=503) as server:
        gen = HTTPChatGenerator(server.url, "m", retries=2, backoff_s=0.01)
        assert gen.generate(["x"]) == ["echo: x"]
        assert len(server.requests) == 3
    with ChatServer(fail_first=1, status=400) as server:  # a client error is not retried
        with pytest.raises(TextGenerationError, match="HTTP 400"):
            HTTPChatGenerator(server.url, "m", retries=3, backoff_s=0.01).generate(["x"])
        assert len(server.requests) == 1
    with ChatServer(body=b'{"unexpected": true}') as server:
        with pytest.raises(TextGenerationError, match="did not answer with a chat completion"):
            HTTPChatGenerator(server.url, "m").generate(["x"])
    with pytest.raises(TextGenerationError, match="cannot reach"):
        HTTPChatGenerator("http://127.0.0.1:9/v1", "m", retries=0, timeout_s=2).generate(["x"])
    monkeypatch.delenv("ZOO_MISSING_KEY", raising=False)
    with pytest.raises(ConfigError, match="ZOO_MISSING_KEY"):
        HTTPChatGenerator("http://127.0.0.1:9/v1", "m", api_key_env="ZOO_MISSING_KEY").generate(["x"])


class FailingAfter:
    """Wraps a generator and raises after ``calls`` successful batches (an interrupted run)."""

    def __init__(self, inner, calls: int) -> None:
        self.inner, self.calls_left = inner, calls

    def generate(self, prompts):
        if self.calls_left == 0:
            raise KeyboardInterrupt
        self.calls_left -= 1
        return self.inner.generate(prompts)


class RecordingGenerator:
    """A local (batched) generator that records the batches it is given and echoes each prompt."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def generate(self, prompts):
        self.batches.append(list(prompts))
        return [f"echo: {p}" for p in prompts]


def test_local_batches_group_prompts_of_similar_length_and_answers_keep_key_order(tmp_path) -> None:
    keys = ["a", "b", "c", "d", "e"]
    prompts = ["x" * 3, "x" * 40, "x" * 5, "x" * 38, "x" * 4]
    gen = RecordingGenerator()
    texts = generate_cached(keys, prompts, gen, tmp_path / "texts.jsonl", batch_size=2)
    assert [[len(p) for p in batch] for batch in gen.batches] == [[40, 38], [5, 4], [3]]
    assert list(texts) == keys and texts == {k: f"echo: {p}" for k, p in zip(keys, prompts)}


def test_reused_texts_of_the_same_prompt_are_taken_and_the_file_is_never_written(tmp_path) -> None:
    from zoo.llm_text import prompt_sha1

    shipped = tmp_path / "shipped.jsonl"
    records = [
        {"key": "a", "text": "old a", "prompt_sha1": prompt_sha1("pa")},
        {"key": "b", "text": "old b", "prompt_sha1": prompt_sha1("another prompt")},  # stale: regenerated
        {"key": "c", "text": "old c", "prompt_sha1": None},  # no prompt to check: regenerated
    ]
    shipped.write_text("\n".join(json.dumps(r) for r in records) + '\n{"key": "d", "te')  # cut-off last line
    before = shipped.read_text()
    gen = RecordingGenerator()
    texts = generate_cached(["a", "b", "c"], ["pa", "pb", "pc"], gen, tmp_path / "cache.jsonl", reuse=shipped)
    assert texts == {"a": "old a", "b": "echo: pb", "c": "echo: pc"}
    assert sorted(p for batch in gen.batches for p in batch) == ["pb", "pc"]
    assert shipped.read_text() == before
    assert TextCache(tmp_path / "cache.jsonl").get("a", "pa") == "old a"  # copied into the cache
    with pytest.raises(ConfigError, match="no generated-text file"):
        generate_cached(["a"], ["pa"], gen, tmp_path / "cache.jsonl", reuse=tmp_path / "missing.jsonl")


def test_cache_resumes_an_interrupted_run_and_regenerates_changed_prompts(tmp_path) -> None:
    path = tmp_path / "texts.jsonl"
    keys, prompts = ["a", "b", "c", "d"], ["pa", "pb", "pc", "pd"]
    with ChatServer() as server:
        gen = HTTPChatGenerator(server.url, "m")
        with pytest.raises(KeyboardInterrupt):
            generate_cached(keys, prompts, FailingAfter(gen, 1), path, batch_size=2)
        assert len(path.read_text().splitlines()) == 2
        texts = generate_cached(keys, prompts, gen, path, batch_size=2)
        assert texts == {k: f"echo: {p}" for k, p in zip(keys, prompts)}
        assert [r["messages"][-1]["content"] for r in server.requests] == prompts  # each prompt asked once
        texts = generate_cached(["a", "b"], ["pa", "pb2"], gen, path)
        assert texts == {"a": "echo: pa", "b": "echo: pb2"}
        assert len(server.requests) == 5
    assert TextCache(path).get("b") == "echo: pb2"  # the last record of a key wins


def test_cache_drops_a_line_cut_off_by_a_crash_and_rejects_corruption(tmp_path) -> None:
    path = tmp_path / "texts.jsonl"
    path.write_text('{"key": "a", "text": "one"}\n{"key": "b", "te')
    cache = TextCache(path)
    assert cache.get("a") == "one" and cache.get("b") is None
    cache.append("b", "two")
    assert [json.loads(line)["key"] for line in path.read_text().splitlines()] == ["a", "b"]
    path.write_text('{"key": "a", "text": "one"}\nnot json\n{"key": "c", "text": "x"}\n')
    with pytest.raises(DataError, match=r"texts.jsonl:2"):
        TextCache(path)


def test_hf_backend_generates_with_a_local_model() -> None:
    import torch

    torch.manual_seed(0)
    gen = HFTextGenerator(OmegaConf.structured(LLMConfig(tiny_hidden=32, tiny_heads=2)), max_new_tokens=4)
    texts = gen.generate(["a user who likes", "another prompt that is longer"])
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)


def test_profile_prompts_use_only_the_training_history() -> None:
    corpus = Corpus.from_sequences("c", [[1, 2, 3, 4], [2, 3, 4]], num_items=4)
    corpus.item_text["title"] = ["", "Alpha", "Beta &amp; Co", "Gamma", "Delta"]
    keys, prompts = profile_prompts(corpus, noun="books")
    assert keys == ["1", "2"]
    assert '"Alpha", "Beta & Co"' in prompts[0] and "Gamma" not in prompts[0] and "Delta" not in prompts[0]
    assert prompts[1].startswith("Here are the books") and '"Beta & Co"' in prompts[1] and "Gamma" not in prompts[1]


def test_cli_writes_profiles_through_the_http_backend(tmp_path, capsys) -> None:
    data = tmp_path / "Books"
    data.mkdir()
    (data / "id2name4Rec.json").write_text(json.dumps({"1": "Dune", "2": "Emma", "3": "Hamlet"}))
    (data / "test.csv").write_text('user_id,item_ids,timestamp\n7,"[1, 2, 3]",5\n8,"[2, 3]",6\n')
    out = tmp_path / "profiles.jsonl"
    args = ["profiles", "recipe=msl_books_lml", f"data.path={data}", f"out={out}", "backend=http", "noun=books"]
    with ChatServer() as server:
        assert main([*args, f"base_url={server.url}", "model=m"]) == 0
    records = sorted((json.loads(line) for line in out.read_text().splitlines()), key=lambda r: r["key"])
    assert [r["key"] for r in records] == ["7", "8"]  # in the order they arrived (concurrency=8 by default)
    assert records[0]["text"] == "echo: " + PROFILE_PROMPT.format(noun="books", titles='"Dune", "Emma"')
    assert main([*args[:4], "backend=grpc", "model=m"]) == 2
    assert "unknown backend" in capsys.readouterr().err


def test_concurrent_requests_overlap_and_results_keep_the_input_order(tmp_path) -> None:
    prompts = [f"p{i}" for i in range(8)]
    delay = lambda prompt: 0.3 - 0.03 * int(prompt[1:])  # noqa: E731  later prompts answer first
    with ChatServer(delay=delay) as server:
        gen = HTTPChatGenerator(server.url, "m", concurrency=4)
        assert gen.generate(prompts) == [f"echo: {p}" for p in prompts]
        assert server.max_in_flight == 4  # four at once, never more
        assert gen.generated_tokens == 2 * len(prompts)  # usage.completion_tokens of each answer
        path = tmp_path / "texts.jsonl"
        keys = [f"k{i}" for i in range(8)]
        texts = generate_cached(keys, prompts, HTTPChatGenerator(server.url, "m", concurrency=3), path, progress=True)
        assert list(texts) == keys and list(texts.values()) == [f"echo: {p}" for p in prompts]
        assert server.max_in_flight == 4
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert sorted(r["key"] for r in lines) == keys  # one whole record per text, in the order they arrived
    with ChatServer(delay=lambda prompt: 0.05) as server:  # long enough that concurrent requests would overlap
        assert HTTPChatGenerator(server.url, "m", concurrency=1).generate(prompts) == [f"echo: {p}" for p in prompts]
        assert server.max_in_flight == 1
    with pytest.raises(ConfigError, match="concurrency"):
        HTTPChatGenerator("http://127.0.0.1:9/v1", "m", concurrency=0)


def test_a_failed_request_keeps_the_texts_that_arrived_and_sends_no_more(tmp_path) -> None:
    path = tmp_path / "texts.jsonl"
    prompts = ["ok0", "ok1", "bad", *[f"later{i}" for i in range(30)]]
    keys = [str(i) for i in range(len(prompts))]
    with ChatServer(delay=lambda p: 0.3 if p == "bad" else 0.02, fail_on="bad") as server:
        with pytest.raises(TextGenerationError, match="HTTP 400"):
            generate_cached(keys, prompts, HTTPChatGenerator(server.url, "m", concurrency=2), path)
        sent = len(server.requests)
    assert sent < len(prompts)  # the requests not yet sent were cancelled
    cached = TextCache(path).records
    assert "2" not in cached and {"0", "1"} <= set(cached) and len(cached) == sent - 1
    with ChatServer() as server:
        texts = generate_cached(keys, prompts, HTTPChatGenerator(server.url, "m", concurrency=2), path)
        assert len(server.requests) == len(prompts) - len(cached)
    assert texts == {k: f"echo: {p}" for k, p in zip(keys, prompts)}


CHILD = """
import sys
from zoo.llm_text import HTTPChatGenerator, generate_cached
url, path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
keys, prompts = [str(i) for i in range(n)], [f"q{i}" for i in range(n)]
generate_cached(keys, prompts, HTTPChatGenerator(url, "m", concurrency=4), path)
"""


def test_a_killed_concurrent_run_resumes_from_the_cache(tmp_path) -> None:
    path, n = tmp_path / "texts.jsonl", 40
    with ChatServer(delay=lambda p: 0.05) as server:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        child = subprocess.Popen([sys.executable, "-c", CHILD, server.url, str(path), str(n)], env=env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and child.poll() is None:
            if path.is_file() and len(path.read_text().splitlines()) >= 8:
                break
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
        child.wait()
        kept = TextCache(path)
        assert 8 <= len(kept.records) < n, "the child finished before it was killed"
        asked = len(server.requests)
        settle = time.monotonic() + 10  # the killed child's last requests may still be reaching the server
        while time.monotonic() < settle:
            time.sleep(0.2)
            if len(server.requests) == asked:
                break
            asked = len(server.requests)
        texts = generate_cached(
            [str(i) for i in range(n)], [f"q{i}" for i in range(n)], HTTPChatGenerator(server.url, "m"), path
        )
        assert texts == {str(i): f"echo: q{i}" for i in range(n)}
        assert len(server.requests) - asked == n - len(kept.records)  # only the texts not cached were asked again
