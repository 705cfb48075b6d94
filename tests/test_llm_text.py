"""LLM-written text: the OpenAI-compatible HTTP backend against a local server on 127.0.0.1 (auth from an
environment variable, retries, errors), the resumable JSONL cache, the HF backend, and profile prompts."""

from __future__ import annotations

import json
import threading
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
    """A minimal /v1/chat/completions: answers "echo: <user message>"; can fail the first N requests."""

    def __init__(self, fail_first: int = 0, status: int = 500, body: bytes | None = None) -> None:
        self.requests: list[dict] = []
        self.auth: list[str | None] = []
        self.fail_left = fail_first
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server API)
                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(payload)
                server.auth.append(self.headers.get("Authorization"))
                if self.path != "/v1/chat/completions":
                    self.send_response(404)
                    self.end_headers()
                    return
                if server.fail_left > 0:
                    server.fail_left -= 1
                    self.send_response(status)
                    self.end_headers()
                    return
                content = "echo: " + payload["messages"][-1]["content"]
                answer = (
                    body or json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
                )
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
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["key"] for r in records] == ["7", "8"]
    assert records[0]["text"] == "echo: " + PROFILE_PROMPT.format(noun="books", titles='"Dune", "Emma"')
    assert main([*args[:4], "backend=grpc", "model=m"]) == 2
    assert "unknown backend" in capsys.readouterr().err
