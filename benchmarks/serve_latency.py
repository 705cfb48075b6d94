"""HTTP serving throughput and latency of ``python -m zoo.serve``: requests per second and p50/p99 latency at 1, 8
and 32 concurrent clients on loopback, for SASRec and TIGER on Beauty.

Latency does not depend on how long a model trained, only on its size and the catalogue: each method is trained
for a few batches with its recipe's full-size network (the overrides are recorded in the JSON; TIGER's RQ-VAE
Semantic-ID stage is shrunk to ``rqvae_epochs``). The server runs in its own process with one torch thread
(``--threads 1``, no access log); the clients are ``concurrency`` closed loops in this process (aiohttp, asyncio),
each sending its next request when the last one is answered, for ``seconds`` per level after ``warmup`` seconds.
A request is one real Beauty user history (its last ``history_len`` training items), ``k=10``, exclude_seen on.
The server's micro-batching is what lets throughput grow with clients; the JSON records the mean number of
histories per model call at each level (from ``/health``).

    python -m benchmarks.serve_latency [methods=sasrec,tiger] [concurrency=1,8,32] [seconds=20] [warmup=3]
        [train_batches=5] [rqvae_epochs=20] [history_len=20] [k=10] [users=2000]

Run it as a module from the repository root (the package installed with the ``dev`` extra: FastAPI, uvicorn,
aiohttp), with the data root set (``ZOO_DATA_DIR=../shared/datasets`` on this project's machines). TIGER's first
run also builds its ``item_embeddings`` stage (sentence embeddings of 12k titles: 15 minutes on one busy CPU
thread), cached for every later run; the JSON records per stage whether it was reused and its one build time.
Writes ``benchmarks/results/serve_latency.json``. The machine is shared: each level carries the load average.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import cli, integer, integers, key_values, names, number, write_result
from zoo.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
RUN_ROOT = REPO / "benchmarks" / ".cache" / "serve_latency"
RECIPES = {"sasrec": "sasrec_beauty", "tiger": "tiger_beauty"}
DEFAULTS = {
    "methods": "sasrec,tiger",
    "concurrency": "1,8,32",
    "seconds": "20",
    "warmup": "3",
    "train_batches": "5",
    "rqvae_epochs": "20",
    "history_len": "20",
    "k": "10",
    "users": "2000",
}


def training_overrides(method: str, train_batches: int, rqvae_epochs: int) -> list[str]:
    """A few batches of training and one batch each of validation and test: enough for real weights."""
    shrink = [
        "trainer.max_epochs=1",
        f"trainer.limit_train_batches={train_batches}",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "trainer.check_val_every_n_epoch=1",
        "trainer.enable_progress_bar=false",
        "data.num_workers=0",
    ]
    if method == "tiger":
        shrink += [f"model.rqvae.epochs={rqvae_epochs}", f"model.rqvae.eval_every={rqvae_epochs}"]
    return shrink


def train(method: str, overrides: list[str]) -> tuple[Path, float]:
    """Train ``method``'s Beauty recipe with ``overrides`` into a fresh run directory; (run_dir, seconds)."""
    import torch

    from zoo.config import compose
    from zoo.run import run

    torch.set_num_threads(1)
    root = RUN_ROOT / method
    before = set(root.glob("*/*")) if root.is_dir() else set()
    started = time.time()
    run(compose(RECIPES[method], [*overrides, f"run_root={root}"]))
    (run_dir,) = [p for p in root.glob("*/*") if p.is_dir() and p not in before]
    return run_dir, time.time() - started


def stage_record(run_dir: Path) -> dict:
    """Per stage of the run: reused from the cache or built, and how long its one build took (its manifest)."""
    import json

    path = run_dir / "stages.json"
    out = {}
    for name, entry in (json.loads(path.read_text()) if path.is_file() else {}).items():
        manifest = Path(entry["path"]) / "manifest.json"
        if not manifest.is_absolute():
            manifest = REPO / manifest
        build_s = json.loads(manifest.read_text()).get("build_s") if manifest.is_file() else None
        out[name] = {"reused": entry["reused"], "build_s": build_s}
    return out


def user_histories(users: int, history_len: int, seed: int = 0) -> list[list[str]]:
    """Raw-id histories of ``users`` random Beauty users: the last ``history_len`` items before their
    validation and test items (what the model saw in training)."""
    from zoo.config import compose
    from zoo.data.loading import load_corpus

    corpus = load_corpus(compose("sasrec_beauty").data)
    rng = np.random.default_rng(seed)
    picked = rng.choice(corpus.num_users, size=min(users, corpus.num_users), replace=False)
    out = []
    for user in picked:
        sequence = corpus.sequence(int(user))[:-2][-history_len:]
        if len(sequence):
            out.append([corpus.item_ids[int(i)] for i in sequence])
    return out


class Server:
    """``python -m zoo.serve RUN_DIR`` in its own process on a free loopback port."""

    def __init__(self, run_dir: Path) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        command = [sys.executable, "-m", "zoo.serve", str(run_dir), "--port", "0", "--threads", "1", "--no-access-log"]
        self.process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        banner = self.process.stdout.readline()
        if " at http://" not in banner:
            self.process.kill()
            raise ConfigError(f"zoo.serve {run_dir} did not start (exit {self.process.wait()})")
        self.url = banner.rsplit(" at ", 1)[1].strip()

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


async def load_level(url: str, histories: list[list[str]], concurrency: int, seconds: float, warmup: float, k: int):
    """``concurrency`` closed-loop clients for ``warmup`` + ``seconds``; (latencies of the timed part in s,
    errors, mean histories per model call over the timed part)."""
    import aiohttp

    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=concurrency + 1)
    async with aiohttp.ClientSession(url, connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        start = time.perf_counter()
        measure_from, stop_at = start + warmup, start + warmup + seconds

        async def counters_at(moment: float) -> dict:  # the server's model-call counters
            await asyncio.sleep(max(0.0, moment - time.perf_counter()))
            async with session.get("/health") as answer:
                return await answer.json()

        async def client_loop(worker: int) -> None:
            nonlocal errors
            position = worker
            while time.perf_counter() < stop_at:
                history = histories[position % len(histories)]
                position += concurrency
                sent = time.perf_counter()
                async with session.post(
                    "/recommend", json={"history": history, "k": k, "exclude_seen": True}
                ) as answer:
                    await answer.read()
                    ok = answer.status == 200
                done = time.perf_counter()
                if not ok:
                    errors += 1
                elif sent >= measure_from and done <= stop_at:
                    latencies.append(done - sent)

        first, *_, last = await asyncio.gather(
            counters_at(measure_from), *(client_loop(w) for w in range(concurrency)), counters_at(stop_at)
        )
    calls = last["model_calls"] - first["model_calls"]
    served = last["histories_served"] - first["histories_served"]
    return latencies, errors, (served / calls if calls else None)


def level_row(latencies: list[float], errors: int, per_call, concurrency: int, seconds: float) -> dict:
    ms = np.asarray(latencies) * 1000.0
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": errors,
        "throughput_rps": round(len(latencies) / seconds, 2),
        "latency_ms": {
            "p50": round(float(np.percentile(ms, 50)), 2) if len(ms) else None,
            "p90": round(float(np.percentile(ms, 90)), 2) if len(ms) else None,
            "p99": round(float(np.percentile(ms, 99)), 2) if len(ms) else None,
            "mean": round(float(ms.mean()), 2) if len(ms) else None,
            "max": round(float(ms.max()), 2) if len(ms) else None,
        },
        "histories_per_model_call": round(per_call, 2) if per_call is not None else None,
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def body(argv: list[str]) -> None:
    settings = key_values(argv, DEFAULTS)
    methods = names(settings, "methods", choices=list(RECIPES))
    levels = integers(settings, "concurrency", minimum=1)
    seconds, warmup = number(settings, "seconds", minimum=1), number(settings, "warmup", minimum=0)
    train_batches, rqvae_epochs = integer(settings, "train_batches", 1), integer(settings, "rqvae_epochs", 1)
    history_len, k = integer(settings, "history_len", 1), integer(settings, "k", 1)
    users = integer(settings, "users", 1)
    started = time.time()
    histories = user_histories(users, history_len)
    results = {}
    for method in methods:
        overrides = training_overrides(method, train_batches, rqvae_epochs)
        run_dir, train_s = train(method, overrides)
        print(f"{method}: trained in {train_s:.0f} s -> {run_dir}", flush=True)
        server = Server(run_dir)
        try:
            rows = []
            for concurrency in levels:
                latencies, errors, per_call = asyncio.run(
                    load_level(server.url, histories, concurrency, seconds, warmup, k)
                )
                rows.append(level_row(latencies, errors, per_call, concurrency, seconds))
                r = rows[-1]
                print(
                    f"  {concurrency:>3} clients: {r['throughput_rps']:8.1f} req/s  p50 {r['latency_ms']['p50']} ms"
                    f"  p99 {r['latency_ms']['p99']} ms  ({r['histories_per_model_call']} histories/call,"
                    f" load {r['load_avg_1m']})",
                    flush=True,
                )
        finally:
            server.close()
        results[method] = {
            "recipe": RECIPES[method],
            "training": {
                "overrides": overrides,
                "note": "a few batches only: serving cost depends on the network and catalogue, not the weights",
                "seconds": round(train_s, 1),
                "stages": stage_record(run_dir),
            },
            "run_dir": str(run_dir.relative_to(REPO)),
            "levels": rows,
        }
    write_result(
        "serve_latency",
        {
            "dataset": "beauty",
            "settings": {
                "concurrency": levels,
                "seconds_per_level": seconds,
                "warmup_s": warmup,
                "k": k,
                "exclude_seen": True,
                "history_len": history_len,
                "distinct_histories": len(histories),
                "server": "python -m zoo.serve RUN_DIR --port 0 --threads 1 --no-access-log (its own process)",
                "client": "aiohttp.ClientSession, closed-loop clients in one asyncio process, keep-alive, loopback",
            },
            "methods": results,
        },
        started=started,
    )


def main(argv: list[str] | None = None) -> int:
    return cli(body, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
