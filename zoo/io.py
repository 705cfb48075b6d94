"""Atomic file writes: a reader never sees a half-written file, and an interrupted write leaves nothing."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


def current_umask() -> int:
    """The process umask (read by setting it and restoring it at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``, on error removed.

    The file gets the permissions an ordinary ``open(path, "w")`` would (``0o666`` less the umask), not the
    ``0o600`` of ``mkstemp``, so that a run directory or a shared cache stays readable by the group."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
    except (AttributeError, OSError):  # Windows: no fchmod
        pass
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | Path, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


KEEP_FILES = ("metrics.json",)  # a run directory holding one of these (or a checkpoint) is kept on failure


def discard_failed_run_dir(run_dir: str | Path, run_root: str | Path | None = None) -> bool:
    """Remove the run directory of a run that failed before it produced anything worth keeping (no checkpoint,
    no metrics.json: a config or data error, an exception while building), and its ``<run_root>/<recipe>``
    parent when that is left empty. A directory with a checkpoint is kept (``resume=`` continues from it).
    Returns whether it removed ``run_dir``. Call it only for a directory this run created itself (not an
    explicit ``run_dir=``, a ``resume=`` or a DDP worker's inherited one), on global rank zero."""
    import shutil

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return False
    if any((run_dir / name).exists() for name in KEEP_FILES) or any((run_dir / "checkpoints").glob("*.ckpt")):
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    parent = run_dir.parent
    if run_root is not None and parent.parent.resolve() == Path(run_root).resolve():
        try:
            parent.rmdir()  # only when empty
        except OSError:
            pass
    return not run_dir.exists()
