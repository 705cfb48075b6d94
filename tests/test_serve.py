"""zoo.serve: the HTTP API, its one-line errors and its micro-batching, with a real HTTP client (httpx) against a
uvicorn server the test starts; first on a small stand-in model with ``zoo.load``'s interface, then end to end on
a run trained here and served by ``python -m zoo.serve``."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from contextlib import contextmanager

import pytest

pytest.importorskip("fastapi", reason="the 'serve' extra is not installed")
import httpx  # noqa: E402
import uvicorn  # noqa: E402
from conftest import WORDS  # noqa: E402

from zoo.errors import ConfigError, RequestError  # noqa: E402
from zoo.serve import create_app, main  # noqa: E402


class Catalog:
    def __init__(self, ids, titles):
        self.ids, self.titles = ids, titles

    def index(self, raw):
        return self.ids.index(raw)


class CycleModel:
    """A stand-in for ``zoo.load``'s model: after item x come x+1, x+2, ... (cyclic) with falling scores.
    Records its calls and fails the test if two calls overlap (the server must not call it concurrently)."""

    def __init__(self, num_items: int = 12, delay: float = 0.0, refuse: str | None = None, broken: bool = False):
        ids = [""] + [str(100 + i) for i in range(1, num_items + 1)]
        titles = [""] + [f"The {WORDS[i % len(WORDS)].title()} Book {i}" for i in range(num_items)]
        self.catalog = Catalog(ids, titles)
        self.info = {"method": "cycle", "recipe": "cycle_test", "dataset": "synthetic", "run_dir": None}
        self.num_items, self.delay, self.refuse, self.broken = num_items, delay, refuse, broken
        self.batch_sizes: list[int] = []
        self.users: list = []
        self.ratings: list = []
        self.busy = False
        self.overlapped = False

    def recommend(self, history, k=10, exclude_seen=True, user=None, ratings=None):
        batched = bool(history) and isinstance(history[0], list)
        self.ratings.append(ratings)
        if self.busy:
            self.overlapped = True
        self.busy = True
        try:
            histories = history if batched else [history]
            self.batch_sizes.append(len(histories))
            self.users.append(user)
            time.sleep(self.delay)
            if self.broken:
                raise RuntimeError("the weights are on fire\nsecond line")
            out = [self._one(h, k, exclude_seen) for h in histories]
        finally:
            self.busy = False
        return out if batched else out[0]

    def _one(self, history, k, exclude_seen):
        if not history:
            raise RequestError("empty history")
        if not 1 <= k <= self.num_items:
            raise RequestError(f"k={k} out of range")
        if self.refuse in history:
            raise RequestError(f"item {self.refuse} cannot be served")
        last = self.catalog.index(history[-1])
        seen = set(history) if exclude_seen else set()
        out = []
        for step in range(1, 2 * self.num_items + 1):
            raw = self.catalog.ids[(last - 1 + step) % self.num_items + 1]
            if raw not in seen and all(raw != e["item"] for e in out):
                out.append({"item": raw, "title": self.catalog.titles[self.catalog.index(raw)], "score": 10.0 - step})
            if len(out) == k:
                break
        return out


@contextmanager
def running(app):
    """``app`` served by uvicorn on a free loopback port in a thread; yields its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started:
        assert thread.is_alive() and time.time() < deadline, "the server did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def served():
    model = CycleModel()
    with running(create_app(model, max_body=4096, max_k=10)) as url, httpx.Client(base_url=url, timeout=10) as client:
        yield model, client


def test_health(served):
    _, client = served
    answer = client.get("/health")
    assert answer.status_code == 200
    health = answer.json()
    assert {k: health.pop(k) for k in ("model_calls", "histories_served")} == {"model_calls": 0, "histories_served": 0}
    assert health == {
        "status": "ok",
        "method": "cycle",
        "recipe": "cycle_test",
        "dataset": "synthetic",
        "num_items": 12,
        "max_k": 10,
    }
    client.post("/recommend", json={"histories": [["101"], ["102"]]})
    after = client.get("/health").json()
    assert (after["model_calls"], after["histories_served"]) == (1, 2)


def test_recommend_one_history(served):
    _, client = served
    answer = client.post("/recommend", json={"history": ["103", "104"], "k": 3})
    assert answer.status_code == 200
    recs = answer.json()["recommendations"]
    assert [r["item"] for r in recs] == ["105", "106", "107"]
    assert recs[0] == {"item": "105", "title": "The Tiger Book 4", "score": 9.0}
    # exclude_seen: the history's own items are left out (the cycle wraps round to them)
    wrapped = client.post("/recommend", json={"history": [112, "103"], "k": 10, "exclude_seen": True}).json()
    wrapped = [r["item"] for r in wrapped["recommendations"]]
    assert wrapped == ["104", "105", "106", "107", "108", "109", "110", "111", "101", "102"]
    kept = client.post("/recommend", json={"history": ["112", "103"], "k": 10, "exclude_seen": False}).json()
    assert [r["item"] for r in kept["recommendations"]][-2:] == ["112", "101"]


def test_recommend_a_batch(served):
    _, client = served
    answer = client.post("/recommend", json={"histories": [["101"], ["110", "111"]], "k": 2})
    assert answer.status_code == 200
    assert [[r["item"] for r in recs] for recs in answer.json()["recommendations"]] == [["102", "103"], ["112", "101"]]


def test_user_ids_reach_the_model(served):
    model, client = served
    assert client.post("/recommend", json={"history": ["101"], "user": 7}).status_code == 200
    assert model.users[-1] == ["7"]
    assert client.post("/recommend", json={"histories": [["101"], ["102"]], "users": ["a", None]}).status_code == 200
    assert model.users[-1] == ["a", None]
    assert client.post("/recommend", json={"history": ["101"]}).status_code == 200
    assert model.users[-1] is None


def test_ratings_reach_the_model(served):
    model, client = served
    assert client.post("/recommend", json={"history": ["101", "102"], "ratings": [5, 3.5]}).status_code == 200
    assert model.ratings[-1] == [[5.0, 3.5]]
    body = {"histories": [["101"], ["102", "103"]], "ratings": [[4], [1, 2]]}
    assert client.post("/recommend", json=body).status_code == 200
    assert model.ratings[-1] == [[4.0], [1.0, 2.0]]
    assert client.post("/recommend", json={"history": ["101"]}).status_code == 200
    assert model.ratings[-1] is None


BAD_REQUESTS = [
    # (body as sent, status, a fragment of the one-line message)
    (b'{"history": ["101",', 400, "malformed JSON"),
    (b"not json at all", 400, "malformed JSON"),
    (b"", 422, "expected a JSON object body"),
    (b'["101"]', 422, "expected a JSON object"),
    (b'{"history": []}', 422, "history is empty"),
    (b'{"histories": []}', 422, "histories is empty"),
    (b'{"histories": [["101"], []]}', 422, "histories[1] is empty"),
    (b'{"history": ["101", "nope", "999"]}', 422, "unknown item ids in history: 'nope', '999'"),
    (b'{"history": ["101"], "k": 0}', 422, "k=0 is out of range: expected 1..10"),
    (b'{"history": ["101"], "k": 11}', 422, "k=11 is out of range"),
    (b'{"history": ["101"], "k": "ten"}', 422, "k: "),
    (b'{"history": ["101"], "k": 2.5}', 422, "k: "),
    (b'{"history": "101"}', 422, "history: "),
    (b'{"history": [["101"]]}', 422, "history.0"),
    (b'{"history": ["101"], "exclude_seen": "maybe"}', 422, "exclude_seen: "),
    (b'{"history": ["101"], "histories": [["101"]]}', 422, "exactly one of"),
    (b"{}", 422, "exactly one of"),
    (b'{"history": ["101"], "topk": 5}', 422, "unknown field 'topk'"),
    (b'{"histories": [["101"]], "users": ["a", "b"]}', 422, "2 users for 1 histories"),
    (b'{"history": ["101"], "users": ["a"]}', 422, "'user' goes with 'history'"),
    (b'{"history": ["101", "102"], "ratings": [5]}', 422, "one rating per history item"),
    (b'{"history": ["101"], "ratings": [[5]]}', 422, "a list of numbers with 'history'"),
    (b'{"histories": [["101"]], "ratings": [5]}', 422, "a list of such lists with 'histories'"),
    (b'{"history": ["101"], "ratings": ["high"]}', 422, "ratings"),
]


@pytest.mark.parametrize("body,status,fragment", BAD_REQUESTS)
def test_bad_requests_get_one_line_and_the_server_keeps_serving(served, body, status, fragment):
    _, client = served
    answer = client.post("/recommend", content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == status, answer.text
    error = answer.json()
    assert list(error) == ["error"] and "\n" not in error["error"]
    assert fragment in error["error"], error["error"]
    assert client.get("/health").status_code == 200


def test_oversized_bodies_get_413(served):
    _, client = served
    big = json.dumps({"history": ["101"] * 2000}).encode()  # over the 4096-byte limit of this app
    declared = client.post("/recommend", content=big, headers={"Content-Type": "application/json"})
    assert declared.status_code == 413 and declared.json() == {
        "error": "request body too large: the limit is 4096 bytes"
    }

    def chunks():  # no Content-Length: counted as it arrives
        for start in range(0, len(big), 1000):
            yield big[start : start + 1000]

    chunked = client.post("/recommend", content=chunks(), headers={"Content-Type": "application/json"})
    assert chunked.status_code == 413 and "too large" in chunked.json()["error"]
    fits = json.dumps({"history": ["101"] * 300}).encode()
    assert len(fits) < 4096
    assert client.post("/recommend", content=fits, headers={"Content-Type": "application/json"}).status_code == 200


def test_a_body_that_is_not_sent_as_json_is_one_line(served):
    _, client = served
    answer = client.post("/recommend", content=b'{"history": ["101"]}', headers={"Content-Type": "text/plain"})
    assert answer.status_code == 415
    assert answer.json() == {"error": "the body must be JSON, sent with Content-Type: application/json"}


def test_unknown_routes_and_methods_are_one_line(served):
    _, client = served
    assert client.get("/nope").status_code == 404 and client.get("/nope").json() == {"error": "Not Found"}
    assert client.get("/recommend").status_code == 405 and list(client.get("/recommend").json()) == ["error"]


def test_item_search(served):
    _, client = served
    found = client.get("/items", params={"q": "book 1"}).json()["items"]
    assert [f["title"] for f in found] == ["The River Book 1", "The Cedar Book 10", "The Amber Book 11"]
    assert found[0] == {"item": "102", "title": "The River Book 1"}
    assert client.get("/items", params={"q": "TIGER"}).json()["items"] == [{"item": "105", "title": "The Tiger Book 4"}]
    assert client.get("/items", params={"q": "111"}).json()["items"][0]["item"] == "111"  # an exact id first
    assert len(client.get("/items", params={"q": "", "limit": 5}).json()["items"]) == 5
    assert client.get("/items", params={"q": "zzz"}).json() == {"items": []}
    for limit in ("0", "101", "many"):
        answer = client.get("/items", params={"q": "b", "limit": limit})
        assert answer.status_code == 422 and "limit" in answer.json()["error"]


def test_page_is_served(served):
    _, client = served
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for element in ('id="search"', 'id="suggestions"', 'id="recommend"', 'id="results"', "/recommend", "/items"):
        assert element in page.text


def test_concurrent_requests_are_batched_and_never_overlap():
    model = CycleModel(delay=0.05)
    with running(create_app(model, max_batch=8)) as url:

        async def many():
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                starts = [str(101 + i % 12) for i in range(24)]
                answers = await asyncio.gather(
                    *(client.post("/recommend", json={"history": [s], "k": 2}) for s in starts)
                )
                return starts, answers

        starts, answers = asyncio.run(many())
    assert all(a.status_code == 200 for a in answers)
    for start, answer in zip(starts, answers):  # every client got the answer to its own history
        first = answer.json()["recommendations"][0]["item"]
        assert int(first) == (int(start) - 100) % 12 + 101
    assert not model.overlapped
    assert len(model.batch_sizes) < 24 and max(model.batch_sizes) > 1 and max(model.batch_sizes) <= 8


def test_a_refused_request_does_not_fail_its_batch():
    model = CycleModel(delay=0.05, refuse="105")
    with running(create_app(model)) as url:

        async def many():
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                histories = [["101"], ["102", "105"], ["103"], ["104"]]
                return await asyncio.gather(*(client.post("/recommend", json={"history": h}) for h in histories))

        answers = asyncio.run(many())
    assert [a.status_code for a in answers] == [200, 422, 200, 200]
    assert answers[1].json() == {"error": "item 105 cannot be served"}


def test_a_model_failure_is_a_500_line_and_the_server_keeps_serving():
    model = CycleModel(broken=True)
    with running(create_app(model)) as url, httpx.Client(base_url=url, timeout=10) as client:
        answer = client.post("/recommend", json={"history": ["101"]})
        assert answer.status_code == 500
        assert answer.json() == {"error": "internal error: RuntimeError: the weights are on fire"}
        model.broken = False
        again = client.post("/recommend", json={"history": ["101"], "k": 1})
        assert again.json()["recommendations"][0]["item"] == "102"


@pytest.mark.parametrize(
    "argv,fragment",
    [
        ([], "RUN_DIR"),
        (["run", "--port", "x"], "--port"),
        (["run", "--port", "70000"], "--port=70000"),
        (["run", "--max-body", "0"], "--max-body=0"),
        (["run", "--colour"], "--colour"),
    ],
)
def test_cli_argument_errors_are_one_line(argv, fragment, capsys):
    assert main(argv) == ConfigError.exit_code
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and fragment in err


# -- end to end: a run trained here, loaded with zoo.load, served ----------------------------------------------


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A SASRec run of a few batches on the shared synthetic corpus (titles "the apple book", ...)."""
    import torch
    from conftest import SHRINK, synthetic_corpus

    from zoo.config import compose
    from zoo.run import run

    root = tmp_path_factory.mktemp("serve-runs")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run(compose("sasrec_ml100k", [*SHRINK, f"run_root={root}", "model.hidden_size=16"]), corpus=synthetic_corpus())
    finally:
        torch.set_num_threads(threads)
    (run_dir,) = [p for p in root.glob("*/*") if p.is_dir()]
    return run_dir


def test_a_trained_run_served_in_process(trained_run):
    import zoo

    model = zoo.load(trained_run)
    histories = [["1", "2", "3"], ["7"], ["12", "1"]]
    expected = model.recommend(histories, k=5, exclude_seen=True)
    with running(create_app(model)) as url, httpx.Client(base_url=url, timeout=30) as client:
        health = client.get("/health").json()
        assert health["method"] == "sasrec" and health["num_items"] == 12 and health["max_k"] == 12
        one = client.post("/recommend", json={"history": histories[0], "k": 5}).json()["recommendations"]
        many = client.post("/recommend", json={"histories": histories, "k": 5}).json()["recommendations"]
        assert [r["item"] for r in one] == [e["item"] for e in expected[0]]
        assert [[r["item"] for r in recs] for recs in many] == [[e["item"] for e in row] for row in expected]
        assert all(r["title"].startswith("the ") for recs in many for r in recs)
        assert not {"1", "2", "3"} & {r["item"] for r in one}  # exclude_seen
        assert client.get("/items", params={"q": "tiger"}).json()["items"] == [{"item": "5", "title": "the tiger book"}]
        bad = client.post("/recommend", json={"history": ["1", "13"]})
        assert bad.status_code == 422 and bad.json() == {"error": "unknown item id in history: '13'"}
        assert client.post("/recommend", json={"history": ["1"], "k": 13}).status_code == 422


def test_cli_serves_a_run_until_interrupted(trained_run):
    import os
    import signal
    import subprocess
    import sys

    from conftest import REPO

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "zoo.serve", str(trained_run), *"--port 0 --threads 1 --max-body 300".split()]
    server = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        banner = server.stdout.readline()
        assert banner.startswith("serving sasrec on ml100k (12 items) at http://127.0.0.1:"), (
            banner + server.stderr.read()
        )
        url = banner.split(" at ")[1].strip()
        with httpx.Client(base_url=url, timeout=30) as client:
            assert client.get("/health").json()["status"] == "ok"
            assert len(client.post("/recommend", json={"history": ["3", "4"], "k": 4}).json()["recommendations"]) == 4
            assert client.post("/recommend", json={"history": ["3"] * 100}).status_code == 413  # --max-body 300
            assert client.get("/").text.startswith("<!doctype html>")
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=30) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_cli_bad_run_dir_is_one_line(tmp_path, capsys):
    assert main([str(tmp_path / "nothing")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "nothing" in err
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) in (1, 2)
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
