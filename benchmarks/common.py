"""What every benchmark shares: the provenance every result JSON carries (git commit, hardware, time, memory)
and the one ``key=value`` argument parser (``key_values`` + typed readers, ``cli`` for ``main``)."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoo.io import write_json_atomic

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=Path(__file__).parent
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def hardware() -> dict:
    info = {
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    try:
        with open("/proc/meminfo") as f:
            info["memory_gb"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    return info


def peak_memory_mb() -> float:
    """Peak resident memory of this process and its finished children (MB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(own, kids) / 1024, 1)


def write_result(name: str, payload: dict, started: float | None = None, directory: Path = RESULTS_DIR) -> Path:
    """Write ``results/<name>.json`` atomically with provenance added to ``payload`` (a ``git_commit`` in it, taken
    when the run started, is kept: the tree may have moved on while it ran; the file's ``merged_from``, the sources
    ``benchmarks.merge`` recorded, is kept too)."""
    record = {
        "name": name,
        **payload,
        "git_commit": payload.get("git_commit") or git_commit(),
        "hardware": hardware(),
        "peak_memory_mb": payload.get("peak_memory_mb", peak_memory_mb()),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if started is not None and "wall_time_s" not in payload:
        record["wall_time_s"] = round(time.time() - started, 2)
    path = directory / f"{name}.json"
    if "merged_from" not in payload and path.is_file():  # a resumed call keeps what benchmarks.merge recorded
        with contextlib.suppress(ValueError):
            earlier = json.loads(path.read_text())
            if isinstance(earlier, dict) and "merged_from" in earlier:
                record["merged_from"] = earlier["merged_from"]
    write_json_atomic(path, record)
    return path


@contextlib.contextmanager
def locked(path: Path):
    """An exclusive lock for the read-merge-write of a result ``path`` (two calls of a benchmark at once, e.g.
    on different seeds or backbones, each keep the other's finished runs)."""
    import fcntl
    import tempfile

    with open(Path(tempfile.gettempdir()) / f"zoo-{path.name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def resumable_result(path: Path, settings: dict, fresh: bool = False, key: str = "resume") -> dict | None:
    """The stored result at ``path`` of an earlier run of a benchmark that resumes (it reuses the finished parts),
    or None when there is none or ``fresh``. Its ``key`` entry must equal ``settings``: a difference, or a file that
    is not such a result, is one line (``ConfigError``) naming ``fresh=true`` or another ``name=``."""
    import json

    from zoo.errors import ConfigError

    if fresh or not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text())
        saved = dict(stored[key])
    except (ValueError, KeyError, TypeError):
        raise ConfigError(
            f"{path} is not a resumable result of this benchmark: pass fresh=true or another name="
        ) from None
    differ = [f"{k}={saved.get(k)} (now {v})" for k, v in settings.items() if saved.get(k) != v]
    if differ:
        raise ConfigError(f"{path} was made with " + ", ".join(differ) + ": pass fresh=true or another name=")
    return stored


def key_values(argv: list[str], allowed: dict[str, Any], overrides: list[str] | None = None) -> dict[str, Any]:
    """``key=value`` command-line arguments over ``allowed`` (key -> default); anything else is a ConfigError
    (one line, exit status 2). Given values are strings (``integer``, ``number``, ``flag``, ``names`` and
    ``integers`` below read them); keys not given keep their default. Keys that start with ``_`` are internal
    (a script calling itself) and are not listed in the message. With ``overrides`` (a list), an argument whose
    key is dotted (``trainer.max_epochs=3``) is appended to it instead: a config override for
    ``zoo.config.compose``."""
    from zoo.errors import ConfigError

    settings = dict(allowed)
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and overrides is not None and "." in key:
            overrides.append(arg)
            continue
        if not sep or key not in settings:
            shown = ", ".join(k for k in settings if not k.startswith("_")) or "(none)"
            dotted = " (or a dotted config override)" if overrides is not None else ""
            raise ConfigError(f"unknown argument '{arg}'; expected key=value with key in: {shown}{dotted}")
        settings[key] = value
    return settings


def integer(settings: dict[str, Any], key: str, minimum: int | None = None) -> int:
    """``settings[key]`` as a whole number (>= ``minimum``); anything else is a ConfigError."""
    from zoo.errors import ConfigError

    value = str(settings[key]).strip()
    try:
        number = int(value)
    except ValueError:
        number = None
    if number is None or (minimum is not None and number < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise ConfigError(f"{key}={value}: expected a whole number{bound}")
    return number


def number(settings: dict[str, Any], key: str, minimum: float | None = None) -> float:
    """``settings[key]`` as a number (>= ``minimum``); anything else is a ConfigError."""
    from zoo.errors import ConfigError

    value = str(settings[key]).strip()
    try:
        result = float(value)
    except ValueError:
        result = None
    if result is None or result != result or (minimum is not None and result < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise ConfigError(f"{key}={value}: expected a number{bound}")
    return result


def flag(settings: dict[str, Any], key: str) -> bool:
    """``settings[key]`` as true / false (also 1 / 0, yes / no); anything else is a ConfigError."""
    from zoo.errors import ConfigError

    value = settings[key]
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "1", "yes"):
        return True
    if str(value).lower() in ("false", "0", "no"):
        return False
    raise ConfigError(f"{key}={value}: expected true or false")


def names(settings: dict[str, Any], key: str, choices: Sequence[str] | None = None) -> list[str]:
    """``settings[key]`` as a comma-separated list of names (each one of ``choices`` when given)."""
    from zoo.errors import ConfigError

    value = settings[key]
    items = list(value) if isinstance(value, (list, tuple)) else [v for v in str(value).split(",") if v]
    if choices is not None:
        unknown = [item for item in items if item not in choices]
        if unknown:
            raise ConfigError(f"{key}: unknown '{unknown[0]}'; valid: {', '.join(choices)}")
    return items


def integers(settings: dict[str, Any], key: str, minimum: int | None = None) -> list[int]:
    """``settings[key]`` as a comma-separated list of whole numbers (each >= ``minimum``)."""
    from zoo.errors import ConfigError

    try:
        return [integer({key: item}, key, minimum) for item in names(settings, key)]
    except ConfigError:
        bound = f", each >= {minimum}" if minimum is not None else ""
        raise ConfigError(f"{key}={settings[key]}: expected comma-separated whole numbers{bound}") from None


def numbers(settings: dict[str, Any], key: str, minimum: float | None = None) -> list[float]:
    """``settings[key]`` as a comma-separated list of numbers (each >= ``minimum``)."""
    from zoo.errors import ConfigError

    bound = f" >= {minimum:g}" if minimum is not None else ""
    try:
        values = [float(item) for item in names(settings, key) if item.strip()]
    except ValueError:
        raise ConfigError(f"{key}: expected numbers{bound}, got {settings[key]!r}") from None
    if any(v != v or (minimum is not None and v < minimum) for v in values):
        raise ConfigError(f"{key}: expected numbers{bound}, got {settings[key]!r}")
    return values


def cli(body: Callable[[list[str]], object], doc: str, argv: list[str] | None = None) -> int:
    """Run a benchmark's ``body(argv)`` (argv: its ``key=value`` arguments) and return the exit status:
    ``-h`` / ``--help`` / ``help`` prints ``doc``; a ``ZooError`` (a bad argument: ConfigError, exit 2; missing
    data: DataError, exit 1) is one line on stderr. ``log_level=LEVEL`` / ``-q`` set up the zoo's logs
    (``zoo.logs``; INFO by default) and are not passed to ``body``."""
    from zoo.errors import ZooError
    from zoo.logs import setup_from_args

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("-h", "--help", "help"):
        print(doc.strip())
        return 0
    try:
        body(setup_from_args(argv))
    except ZooError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    return 0


def cutoff_metrics(metrics: dict) -> dict:
    """A run's test metrics at a cut-off (``test/ndcg@10``, ...), rounded to 5 decimals."""
    return {k: round(float(v), 5) for k, v in sorted(metrics.items()) if k.startswith("test/") and "@" in k}


def retest(target: Path, overrides: Sequence[str] = (), timed: bool = False) -> dict:
    """``cutoff_metrics`` of a finished ``zoo.run`` run tested again (``train=false``): ``target`` is its directory
    (its best checkpoint) or a ``.ckpt`` of it; ``overrides`` may change ``eval.*``. The run is not rewritten.
    ``timed`` adds the test's wall time (``wall_s``)."""
    from zoo.run import compose_resume, run

    settings = ["train=false", "trainer.enable_progress_bar=false", *overrides]
    t0 = time.time()
    metrics = cutoff_metrics(run(compose_resume(str(target), None, settings)))
    return {**metrics, "wall_s": round(time.time() - t0, 1)} if timed else metrics


def finished_runs(value: str) -> list[Path]:
    """A benchmark's ``runs=`` (comma-separated ``zoo.run`` directories), resolved; one line for an empty list or a
    directory without ``checkpoints/best.ckpt``."""
    from zoo.errors import ConfigError

    runs = [Path(r.strip()).resolve() for r in value.split(",") if r.strip()]
    if not runs:
        raise ConfigError("runs= names no run directory")
    for run_dir in runs:
        if not (run_dir / "checkpoints" / "best.ckpt").is_file():
            raise ConfigError(f"{run_dir}: no checkpoints/best.ckpt (runs= takes finished zoo.run directories)")
    return runs


def run_config(run_dir: Path) -> dict:
    """A run directory's resolved config (its config.yaml) as a plain dict."""
    import yaml

    return yaml.safe_load((Path(run_dir) / "config.yaml").read_text()) or {}


def ndcg_at(ranks: np.ndarray, k: int) -> np.ndarray:
    """Per-row NDCG@k of one target from its 0-based rank (a rank >= k, or -1 for not ranked, scores 0)."""
    ranks = np.asarray(ranks)
    return np.where((ranks >= 0) & (ranks < k), 1.0 / np.log2(np.maximum(ranks, 0) + 2.0), 0.0)


def bootstrap(
    values: dict[str, np.ndarray], resamples: int, seed: int = 0, reference: str = "lml", metric: str = "ndcg@10"
) -> dict:
    """Mean of each row of ``values`` (name -> per-test-row ``metric``, NDCG@10 by default, the same test rows for
    every name) and paired 95% intervals: the same resampled test rows for every name, also for each name's
    difference to ``reference`` (when present)."""
    rng = np.random.default_rng(seed)
    n = len(next(iter(values.values())))
    picks = rng.integers(0, n, size=(resamples, n))
    out = {}
    for name, v in values.items():
        means = v[picks].mean(axis=1)
        out[name] = {
            metric: float(v.mean()),
            "ci95": [float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))],
        }
    if reference in values:
        base = values[reference]
        for name, v in values.items():
            if name == reference:
                continue
            diff = (v - base)[picks].mean(axis=1)
            out[name][f"minus_{reference}"] = float((v - base).mean())
            out[name][f"minus_{reference}_ci95"] = [float(np.quantile(diff, 0.025)), float(np.quantile(diff, 0.975))]
            out[name][f"relative_to_{reference}"] = float(v.mean() / base.mean() - 1) if base.mean() > 0 else None
    return out
