"""The zoo's log messages on stderr: one handler on the ``zoo`` logger (not the root logger, so an application's
own logging set-up is left alone), short lines ``HH:MM:SS INFO zoo.stages: message``.

Nothing in the library configures logging on import; the command lines (``python -m zoo.run``, the benchmarks,
``python -m zoo.llm_text``) call ``setup`` once, so INFO messages (stage reuse, data builds, progress lines) are
shown by default. ``log_level=WARNING`` (or ``-q`` / ``--quiet``) keeps only warnings and errors. Under DDP only
global rank zero logs below WARNING, so N processes do not print every line N times.
"""

from __future__ import annotations

import logging
import os
import sys

from zoo.errors import ConfigError

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
QUIET_FLAGS = ("-q", "--quiet")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DATE_FORMAT = "%H:%M:%S"
# the variables that give a process its rank, in the order lightning_utilities' rank_zero_only reads them
RANK_ENV = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


def process_rank() -> int:
    """This process' rank as Lightning knows it before the process group exists (0 when not distributed)."""
    for name in RANK_ENV:
        value = os.environ.get(name)
        if value is not None:
            try:
                return int(value)
            except ValueError:
                return 0
    return 0


class _StderrHandler(logging.StreamHandler):
    """Writes to the *current* ``sys.stderr`` (pytest and notebooks swap it), not the one of set-up time."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # noqa: D401
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup(level: str | int = "INFO", quiet: bool = False) -> logging.Logger:
    """Configure the ``zoo`` logger hierarchy: ``level`` (a name of ``LEVELS`` or a number), WARNING when
    ``quiet``, at least WARNING on a rank other than zero. Idempotent: a second call changes the level and keeps
    one handler. Returns the ``zoo`` logger."""
    if isinstance(level, str):
        name = level.strip().upper()
        if name not in LEVELS:
            raise ConfigError(f"log_level={level}: expected one of {', '.join(LEVELS)}")
        level = getattr(logging, name)
    if quiet:
        level = max(level, logging.WARNING)
    if process_rank() != 0:
        level = max(level, logging.WARNING)
    logger = logging.getLogger("zoo")
    logger.setLevel(level)
    handler = next((h for h in logger.handlers if isinstance(h, _StderrHandler)), None)
    if handler is None:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter(FORMAT, DATE_FORMAT))
        logger.addHandler(handler)
    return logger


def setup_from_args(argv: list[str]) -> list[str]:
    """``setup`` from a command line's own ``log_level=LEVEL`` and ``-q`` / ``--quiet`` arguments, which are
    removed: the rest is returned for the command's own parser (``log_level`` is not a config key, so it neither
    enters a run's config.yaml nor blocks a resume)."""
    level, quiet, rest = "INFO", False, []
    for arg in argv:
        if arg in QUIET_FLAGS:
            quiet = True
        elif arg.startswith("log_level="):
            level = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    setup(level, quiet)
    return rest
