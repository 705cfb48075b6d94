"""Serve a trained model over HTTP: ``python -m zoo.serve RUN_DIR [--host 127.0.0.1] [--port 8000]``.

FastAPI on uvicorn (the ``serve`` extra): FastAPI gives typed request bodies and an OpenAPI schema
(``/openapi.json``) for free, uvicorn is the ASGI server it is built for. The endpoints:

* ``GET /`` the page (``zoo/static/index.html``): search items by title, build a history, see the top-k;
* ``GET /health`` status, method, dataset, number of items;
* ``GET /items?q=substring&limit=20`` items whose title (or raw id) contains ``q``, for the page's search;
* ``POST /recommend`` ``{"history": [raw ids], "k": 10, "exclude_seen": true}``, or ``{"histories": [[...],
  ...]}`` for many users at once: the top-k as raw ids with titles and scores.

Every error is a 4xx (5xx for a fault of the server) with one line, ``{"error": "..."}``: malformed JSON 400, an
oversized body 413, a wrong field, an empty history, unknown ids or k out of range 422. The server keeps serving.

The model is not assumed thread-safe: one worker thread runs it, under ``torch.inference_mode()``. Requests that
arrive while it is busy are batched into its next call (micro-batching), so throughput grows with concurrent
clients while a lone client waits for nobody.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any, Union

from zoo.errors import ConfigError, RequestError, ZooError

try:  # the ``serve`` extra
    import uvicorn
    from fastapi import FastAPI, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse
    from pydantic import BaseModel, ConfigDict, StrictBool, StrictInt, StrictStr
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as err:  # pragma: no cover - exercised only without the extra
    _MISSING = err.name
else:
    _MISSING = None

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY = 64 * 1024  # bytes; a history of a few thousand ids fits many times over
DEFAULT_MAX_K = 100
DEFAULT_MAX_BATCH = 64  # histories per model call when requests queue up
MAX_SEARCH_LIMIT = 100
BODY_METHODS = (b"POST", b"PUT", b"PATCH")


def require_extra() -> None:
    """FastAPI and uvicorn are dependencies of the package; in an environment without them, one line saying so."""
    if _MISSING is not None:
        raise ZooError(f"serving needs FastAPI and uvicorn ({_MISSING} is not installed): pip install fastapi uvicorn")


if _MISSING is None:
    RawId = Union[StrictStr, StrictInt]  # ids are strings; a JSON number is read as its decimal string

    class RecommendRequest(BaseModel):
        """One history (``history``) or a batch of them (``histories``); unknown fields are refused."""

        model_config = ConfigDict(extra="forbid")

        history: list[RawId] | None = None
        histories: list[list[RawId]] | None = None
        k: StrictInt = 10
        exclude_seen: StrictBool = True
        user: RawId | None = None  # the raw user id of ``history`` (CTR models rank items for a known user)
        users: list[RawId | None] | None = None  # one per entry of ``histories``
        ratings: list[float] | list[list[float]] | None = None  # CTR models: the ratings of the history's items


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` gets 413 before the application sees it. A declared
    ``Content-Length`` over the limit is refused unread; a chunked body is counted as it arrives."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"].encode() not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._refuse(scope, send)
                return
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope, send) -> None:
        response = JSONResponse(
            {"error": f"request body too large: the limit is {self.max_bytes} bytes"},
            status_code=413,
            headers={"Connection": "close"},
        )
        await response(scope, None, send)


@dataclass
class _Queued:
    """One request waiting for the model: its histories and options, and the future its answer settles."""

    histories: list[list[str]]
    k: int
    exclude_seen: bool
    users: list | None
    ratings: list | None
    future: asyncio.Future

    @property
    def group(self) -> tuple:  # requests that can share one model call
        return (self.k, self.exclude_seen, self.users is not None, self.ratings is not None)


class MicroBatcher:
    """Runs ``model.recommend`` on one worker thread. Requests that queue while a call runs go into the next
    call together (up to ``max_batch`` histories, grouped by ``k`` and ``exclude_seen``); if a merged call
    refuses its input, each request is retried alone so only the bad one gets the error."""

    def __init__(self, model, max_batch: int = DEFAULT_MAX_BATCH) -> None:
        self.model = model
        self.max_batch = max_batch
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="zoo-model")
        self._pending: list[_Queued] = []
        self._draining = False
        self.calls = 0  # model calls made and histories answered: /health reports them (micro-batching at work)
        self.histories = 0

    async def recommend(
        self,
        histories: list[list[str]],
        k: int,
        exclude_seen: bool,
        users: list | None = None,
        ratings: list | None = None,
    ) -> list[list[dict]]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append(_Queued(histories, k, exclude_seen, users, ratings, future))
        if not self._draining:
            self._draining = True
            loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                taken, size = [], 0
                while self._pending and (not taken or size + len(self._pending[0].histories) <= self.max_batch):
                    taken.append(self._pending.pop(0))
                    size += len(taken[-1].histories)
                groups: dict[tuple, list[_Queued]] = {}
                for request in taken:
                    groups.setdefault(request.group, []).append(request)
                for (k, exclude_seen, _, _), requests in groups.items():
                    await self._run_group(loop, requests, k, exclude_seen)
        finally:
            self._draining = False

    async def _run_group(self, loop, requests: list, k: int, exclude_seen: bool) -> None:
        merged = [h for request in requests for h in request.histories]
        users = None if requests[0].users is None else [u for request in requests for u in request.users]
        ratings = None if requests[0].ratings is None else [r for request in requests for r in request.ratings]
        try:
            lists = await loop.run_in_executor(self._executor, self._call, merged, k, exclude_seen, users, ratings)
        except RequestError as err:
            if len(requests) == 1:
                _settle(requests[0].future, error=err)
                return
            for request in requests:  # find the request that was refused
                await self._run_group(loop, [request], k, exclude_seen)
            return
        except Exception as err:  # noqa: BLE001 - handed to each waiting request, answered as a 500
            for request in requests:
                _settle(request.future, error=err)
            return
        start = 0
        for request in requests:
            _settle(request.future, result=lists[start : start + len(request.histories)])
            start += len(request.histories)

    def _call(
        self, histories: list[list[str]], k: int, exclude_seen: bool, users: list | None, ratings: list | None = None
    ) -> list[list[dict]]:
        import torch

        self.calls += 1
        self.histories += len(histories)
        extra = {} if users is None else {"user": users}
        if ratings is not None:
            extra["ratings"] = ratings
        with torch.inference_mode():  # thread-local: entered on the worker thread itself
            lists = self.model.recommend(histories, k=k, exclude_seen=exclude_seen, **extra)
        return [[_plain(entry) for entry in entries] for entries in lists]

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _settle(future: asyncio.Future, result=None, error: BaseException | None = None) -> None:
    if future.done():  # the client went away
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _plain(entry: dict) -> dict:
    """A recommendation as JSON-able values (a score may come back as a numpy or torch scalar)."""
    out = {"item": str(entry["item"]), "title": "" if entry.get("title") is None else str(entry["title"])}
    if entry.get("score") is not None:
        out["score"] = float(entry["score"])
    return out


def _one_line(exc: RequestValidationError) -> tuple[int, str]:
    """FastAPI's list of validation errors as (status, one line): the first error, where it is and why."""
    errors = exc.errors()
    if not errors:
        return 422, "invalid request"
    first = errors[0]
    if first.get("type") == "json_invalid":
        reason = (first.get("ctx") or {}).get("error", "")
        return 400, f"malformed JSON{': ' + str(reason) if reason else ''} (at character {first['loc'][-1]})"
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
    if first.get("type") == "missing" and not where:
        return 422, "expected a JSON object body"
    if not where and isinstance(first.get("input"), bytes):  # a body FastAPI did not read as JSON
        return 415, "the body must be JSON, sent with Content-Type: application/json"
    if not where and first.get("type") in ("model_attributes_type", "dict_type"):
        return 422, 'expected a JSON object, such as {"history": ["1", "2"], "k": 10}'
    if first.get("type") == "extra_forbidden":
        return 422, f"unknown field '{where}'; expected history or histories, k, exclude_seen, user or users, ratings"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return 422, f"{where or 'body'}: {first.get('msg', 'invalid')}{more}"


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(model, max_body: int = DEFAULT_MAX_BODY, max_k: int = DEFAULT_MAX_K, max_batch: int = DEFAULT_MAX_BATCH):
    """The ASGI application serving ``model`` (anything with ``recommend``, ``catalog`` and ``info`` as
    ``zoo.load`` returns). ``max_body``: largest request body in bytes; ``max_k``: largest k served (at most the
    number of items); ``max_batch``: most histories per model call."""
    require_extra()
    ids = [str(i) for i in model.catalog.ids]
    titles = ["" if t is None else str(t) for t in model.catalog.titles]
    num_items = len(ids) - 1  # index 0 is padding
    position = {raw: index for index, raw in enumerate(ids) if index}
    lowered = [f"{t}\n{i}".lower() for t, i in zip(titles, ids)]
    info = dict(model.info or {})
    k_limit = max(1, min(max_k, num_items))
    batcher = MicroBatcher(model, max_batch=max_batch)

    @asynccontextmanager
    async def lifespan(app):
        yield
        batcher.close()

    app = FastAPI(title="zoo", description=f"{info.get('method')} on {info.get('dataset')}", lifespan=lifespan)
    app.add_middleware(BodyLimit, max_bytes=max_body)
    app.state.batcher = batcher

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        return _error(*_one_line(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception):
        log.exception("request %s %s failed", request.method, request.url.path)
        return _error(500, f"internal error: {type(exc).__name__}: {exc}".splitlines()[0])

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse(resources.files("zoo").joinpath("static", "index.html").read_text(encoding="utf-8"))

    @app.get("/health")
    async def health():
        return {
            "status": "ok",
            "method": info.get("method"),
            "recipe": info.get("recipe"),
            "dataset": info.get("dataset"),
            "num_items": num_items,
            "max_k": k_limit,
            "model_calls": batcher.calls,
            "histories_served": batcher.histories,
        }

    @app.get("/items")
    async def items(q: str = "", limit: int = Query(20)):
        if not 1 <= limit <= MAX_SEARCH_LIMIT:
            return _error(422, f"limit={limit} is out of range: expected 1..{MAX_SEARCH_LIMIT}")
        needle = q.strip().lower()
        exact = position.get(q.strip())  # an exact raw id comes first
        found = [] if exact is None else [exact]
        for index in range(1, len(ids)):
            if len(found) >= limit:
                break
            if index != exact and needle in lowered[index]:
                found.append(index)
        return {"items": [{"item": ids[i], "title": titles[i]} for i in found]}

    @app.post("/recommend")
    async def recommend(body: RecommendRequest):
        if (body.history is None) == (body.histories is None):
            return _error(422, "give exactly one of 'history' (a list of item ids) or 'histories' (a list of them)")
        batched = body.histories is not None
        histories = [[str(i) for i in h] for h in (body.histories if batched else [body.history])]
        if not histories:
            return _error(422, "histories is empty: give at least one history")
        for row, history in enumerate(histories):
            name = f"histories[{row}]" if batched else "history"
            if not history:
                return _error(422, f"{name} is empty: give at least one item id")
            unknown = list(dict.fromkeys(i for i in history if i not in position))
            if unknown:
                shown = ", ".join(repr(i) for i in unknown[:5])
                shown += f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
                return _error(422, f"unknown item id{'s' if len(unknown) > 1 else ''} in {name}: {shown}")
        if not 1 <= body.k <= k_limit:
            return _error(422, f"k={body.k} is out of range: expected 1..{k_limit}")
        if (body.user is not None and batched) or (body.users is not None and not batched):
            return _error(422, "'user' goes with 'history', 'users' (one per history) with 'histories'")
        users = body.users if batched else (None if body.user is None else [body.user])
        if users is not None and len(users) != len(histories):
            return _error(422, f"{len(users)} users for {len(histories)} histories")
        users = None if users is None else [None if u is None else str(u) for u in users]
        ratings = body.ratings
        if ratings is not None:
            nested = bool(ratings) and all(isinstance(r, list) for r in ratings)
            if nested != batched:
                return _error(422, "'ratings': a list of numbers with 'history', a list of such lists with 'histories'")
            ratings = ratings if batched else [ratings]
            if len(ratings) != len(histories) or any(len(r) != len(h) for r, h in zip(ratings, histories)):
                return _error(422, "'ratings' must hold one rating per history item")
        try:
            lists = await batcher.recommend(histories, body.k, body.exclude_seen, users, ratings)
        except RequestError as err:
            return _error(422, str(err).splitlines()[0] if str(err) else "invalid request")
        except Exception as err:  # noqa: BLE001 - a fault of the model: a 500 line, and the server goes on
            log.exception("recommend failed")
            return _error(500, f"internal error: {type(err).__name__}: {err}".splitlines()[0])
        if batched:
            return {"recommendations": lists, "k": body.k}
        return {"recommendations": lists[0], "k": body.k}

    return app


class _Server(uvicorn.Server if _MISSING is None else object):
    """uvicorn's server, printing the address it listens on once it does (the real port when given 0)."""

    def __init__(self, config, banner: str) -> None:
        super().__init__(config)
        self.banner = banner

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            shown = f"[{host}]" if ":" in host else host
            print(f"{self.banner} at http://{shown}:{port}", flush=True)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit status 2, as zoo.run does
        raise ConfigError(message)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = _Parser(prog="python -m zoo.serve", description="Serve a trained zoo model over HTTP.")
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run directory, a .ckpt in it, or an exported folder")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed)")
    parser.add_argument("--max-body", type=int, default=DEFAULT_MAX_BODY, metavar="BYTES")
    parser.add_argument("--max-k", type=int, default=DEFAULT_MAX_K)
    parser.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH, help="histories per model call")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--no-access-log", action="store_true", help="do not log every request")
    args = parser.parse_args(list(argv))
    for name in ("max_body", "max_k", "max_batch", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')}={value}: expected a whole number >= 1")
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port={args.port}: expected 0..65535")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    from zoo.logs import setup_from_args

    argv = setup_from_args(sys.argv[1:] if argv is None else list(argv))
    try:
        args = parse_args(argv)
        require_extra()
        import torch

        import zoo

        if args.threads:
            torch.set_num_threads(args.threads)
        model = zoo.load(args.run_dir)
        app = create_app(model, max_body=args.max_body, max_k=args.max_k, max_batch=args.max_batch)
    except ZooError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    info: dict[str, Any] = dict(model.info or {})
    banner = f"serving {info.get('method')} on {info.get('dataset')} ({len(model.catalog.ids) - 1} items)"
    config = uvicorn.Config(app, host=args.host, port=args.port, access_log=not args.no_access_log)
    server = _Server(config, banner)
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it shut down on: the normal way to stop
        pass
    if not server.started:  # uvicorn said why (the port is taken, ...)
        return 1
    print("server stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
