"""Progress of the zoo's long steps (dataset builds, sentence embedding, RQ-VAE epochs, candidate export, LLM text,
leaderboard cells): a tqdm bar when stderr is a terminal, else (a log file, CI, a batch job) one log line every
``every_s`` seconds with done/total, the rate and the ETA, plus a closing line, e.g.::

    12:03:01 INFO zoo.modules.text_encoder: item embeddings: 512/12101 (4%), 41.2 items/s, ETA 4m41s

Both follow the logger: nothing is shown when it is quieter than INFO (``log_level=WARNING``, ``-q``, a DDP rank
other than zero, or a library use that never called ``zoo.logs.setup``).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
EVERY_S = 10.0  # seconds between two log lines (non-TTY)
CLOSING_AFTER_S = 1.0  # a step shorter than this (and never reported on the way) gets no closing line


def duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``."""
    seconds = max(int(round(seconds)), 0)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """``update(n, **postfix)`` after each piece of work; ``close()`` (or a ``with`` block) at the end.
    ``postfix`` values (a loss, tokens/s) are shown beside the counts. ``tty`` and ``clock`` default to
    ``sys.stderr.isatty()`` and ``time.monotonic`` (tests pass a fake clock)."""

    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str = "it",
        log: logging.Logger | None = None,
        every_s: float = EVERY_S,
        tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.log = log or logging.getLogger("zoo.progress")
        self.every_s, self.clock = every_s, clock
        self.enabled = self.log.isEnabledFor(logging.INFO)
        self.done, self.postfix, self.reported = 0, {}, False
        self.started = self.last = clock()
        self.bar = None
        if self.enabled and (sys.stderr.isatty() if tty is None else tty):
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=False)

    def update(self, n: int = 1, **postfix) -> None:
        self.done += n
        self.postfix.update(postfix)
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix({k: _fmt(v) for k, v in self.postfix.items()}, refresh=False)
            self.bar.update(n)
        elif self.enabled and self.clock() - self.last >= self.every_s:
            self.last = self.clock()
            self.reported = True
            self.log.info("%s", self.line())

    def line(self) -> str:
        """``desc: done/total (pct%), rate unit/s, ETA t`` (no total: the count and the rate)."""
        elapsed = max(self.clock() - self.started, 1e-9)
        rate = self.done / elapsed
        text = f"{self.desc}: {self.done}"
        if self.total:
            text += f"/{self.total} ({100 * self.done / self.total:.0f}%)"
        text += f", {rate:.3g} {self.unit}/s"
        if self.total and rate > 0:
            text += f", ETA {duration((self.total - self.done) / rate)}"
        return text + self._postfix()

    def _postfix(self) -> str:
        return "".join(f", {k}={_fmt(v)}" for k, v in self.postfix.items())

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if not self.enabled:
            return
        elapsed = self.clock() - self.started
        if self.reported or elapsed >= CLOSING_AFTER_S:
            rate = self.done / max(elapsed, 1e-9)
            self.log.info(
                "%s: %d %s in %s (%.3g %s/s)%s",
                self.desc,
                self.done,
                self.unit,
                duration(elapsed),
                rate,
                self.unit,
                self._postfix(),
            )
        self.enabled = False  # closed: a second close says nothing

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def track(
    iterable: Iterable[T], total: int | None = None, desc: str = "working", unit: str = "it", **kwargs
) -> Iterator[T]:
    """Iterate ``iterable`` with a ``Progress`` (one ``update`` per item)."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with Progress(total, desc, unit, **kwargs) as progress:
        for item in iterable:
            yield item
            progress.update()


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def read_lines(f, path, desc: str, log: logging.Logger | None = None, every: int = 20000) -> Iterator[str]:
    """The lines of the open text file ``f`` (plain or gzip) with progress in bytes of ``path`` read so far (the
    compressed bytes of a .gz file), so a long parse shows its rate and ETA."""
    import os

    raw = getattr(getattr(f, "buffer", None), "fileobj", None) or getattr(f, "buffer", None)
    total = os.path.getsize(path) if os.path.isfile(path) else None
    with Progress(total, desc, "B", log) as progress:
        for n, line in enumerate(f, start=1):
            if n % every == 0 and raw is not None:
                progress.update(raw.tell() - progress.done)
            yield line
        if total:
            progress.update(total - progress.done)
