"""What every benchmark result JSON carries: provenance (git commit, hardware, time, memory) and the payload."""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

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
    """Write ``results/<name>.json`` atomically with provenance added to ``payload``."""
    record = {
        "name": name,
        **payload,
        "git_commit": git_commit(),
        "hardware": hardware(),
        "peak_memory_mb": payload.get("peak_memory_mb", peak_memory_mb()),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if started is not None and "wall_time_s" not in payload:
        record["wall_time_s"] = round(time.time() - started, 2)
    path = directory / f"{name}.json"
    write_json_atomic(path, record)
    return path


def key_values(argv: list[str], allowed: dict[str, object]) -> dict[str, str]:
    """``key=value`` command-line arguments over ``allowed`` (key -> default); anything else is a ConfigError."""
    from zoo.errors import ConfigError

    settings = dict(allowed)
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in settings:
            raise ConfigError(f"unknown argument '{arg}'; expected key=value with key in: {', '.join(settings)}")
        settings[key] = value
    return settings
