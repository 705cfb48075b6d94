"""Logs and progress: the zoo's INFO messages reach stderr of ``python -m zoo.run`` by default and not with
``-q`` / ``log_level=WARNING``; ``zoo.logs.setup`` is idempotent and quiet off rank zero; the progress helper's
non-TTY lines carry done/total, rate and ETA (a fake clock, no sleeping)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from zoo.errors import ConfigError
from zoo.logs import setup, setup_from_args
from zoo.progress import Progress, duration, track

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def zoo_logger():
    """The ``zoo`` logger, restored afterwards (level and handlers) so other tests see it as they expect."""
    logger = logging.getLogger("zoo")
    level, handlers = logger.level, list(logger.handlers)
    yield logger
    logger.setLevel(level)
    logger.handlers[:] = handlers


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def zoo_args(tmp_path: Path) -> list[str]:
    data = tmp_path / "seq.txt"
    if not data.is_file():  # written once: a rewrite would change the cache key
        data.write_text(
            "".join(f"{u} " + " ".join(str((u + i) % 9 + 1) for i in range(6)) + "\n" for u in range(1, 13))
        )
    return [
        "recipe=pop_ml100k",
        "data.name=seqfile",
        f"data.path={data}",
        f"data.cache_dir={tmp_path / 'cache'}",
        f"run_root={tmp_path / 'runs'}",
        "trainer.enable_progress_bar=false",
    ]


def test_zoo_info_messages_are_on_stderr_by_default_and_hidden_when_quiet(tmp_path, zoo_logger, capsys) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    shown = subprocess.run(
        [sys.executable, "-m", "zoo.run", *zoo_args(tmp_path)], capture_output=True, text=True, cwd=REPO, env=env
    )
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert " INFO zoo.data.cache: seqfile: corpus built in " in shown.stderr
    import zoo.run

    for quiet in ("-q", "log_level=WARNING"):  # in this process: the same main(), a cache hit now
        assert zoo.run.main([*zoo_args(tmp_path), quiet]) == 0
        out, err = capsys.readouterr()
        assert "test/ndcg@10" in out and "INFO zoo." not in err, err


def test_setup_is_idempotent_quiet_off_rank_zero_and_refuses_unknown_levels(zoo_logger, monkeypatch) -> None:
    for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        monkeypatch.delenv(name, raising=False)
    setup()
    setup("debug")
    assert zoo_logger.level == logging.DEBUG and len(zoo_logger.handlers) == 1
    assert zoo_logger.handlers[0] not in logging.getLogger().handlers  # not the root logger
    assert setup_from_args(["recipe=x", "-q", "seed=1"]) == ["recipe=x", "seed=1"]
    assert zoo_logger.level == logging.WARNING and len(zoo_logger.handlers) == 1
    monkeypatch.setenv("LOCAL_RANK", "1")  # a DDP worker: warnings and errors only
    setup("INFO")
    assert zoo_logger.level == logging.WARNING
    with pytest.raises(ConfigError, match="log_level=LOUD"):
        setup_from_args(["log_level=LOUD"])


def test_handler_writes_to_the_current_stderr(zoo_logger, monkeypatch, capsys) -> None:
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    setup("INFO")
    logging.getLogger("zoo.data.loading").info("hello %d", 7)
    err = capsys.readouterr().err
    assert err.endswith(" INFO zoo.data.loading: hello 7\n") and err[2] == ":"  # HH:MM:SS level name: message


def test_progress_logs_rate_and_eta_every_interval_without_a_tty(zoo_logger, caplog) -> None:
    zoo_logger.setLevel(logging.INFO)
    clock, log = FakeClock(), logging.getLogger("zoo.test_progress")
    with caplog.at_level(logging.INFO, logger="zoo"):
        progress = Progress(2000, "embedding", "items", log, every_s=10, tty=False, clock=clock)
        for _ in range(3):  # 100 items a second: no line before 10 s
            clock.now += 2.5
            progress.update(250)
        assert caplog.messages == []
        clock.now += 2.5
        progress.update(250)
        clock.now += 2.5
        progress.update(250, loss=0.123456)  # 2.5 s after the last line: none
        progress.close()
        progress.close()  # says nothing twice
    assert caplog.messages == [
        "embedding: 1000/2000 (50%), 100 items/s, ETA 10s",
        "embedding: 1250 items in 12s (100 items/s), loss=0.1235",
    ]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="zoo"):
        progress = Progress(400, "cells", "cell", log, every_s=10, tty=False, clock=clock)
        clock.now += 20
        progress.update(100)
    assert caplog.messages == ["cells: 100/400 (25%), 5 cell/s, ETA 1m00s"]


def test_progress_is_silent_when_the_logger_is_quieter_than_info(zoo_logger, caplog) -> None:
    zoo_logger.setLevel(logging.WARNING)
    clock = FakeClock()
    with caplog.at_level(logging.DEBUG):
        progress = Progress(10, "x", log=logging.getLogger("zoo.quiet"), every_s=1, tty=True, clock=clock)
        assert progress.bar is None  # no tqdm bar either
        clock.now += 5
        progress.update(5)
        progress.close()
        assert list(track(range(3), desc="y", log=logging.getLogger("zoo.quiet"), tty=False)) == [0, 1, 2]
    assert caplog.messages == []


def test_duration_format() -> None:
    assert [duration(s) for s in (0.4, 42, 185, 3720)] == ["0s", "42s", "3m05s", "1h02m"]
