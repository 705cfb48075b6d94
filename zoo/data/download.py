"""Where datasets live (the data root, ``docs/architecture.md``) and how a missing upstream file is fetched.

``fetch`` streams a file over HTTP(S) into ``<dest>.part`` with a tqdm progress bar, resumes an interrupted
transfer with an HTTP ``Range`` request, verifies the checksum when one is known, and renames the finished file
onto ``dest`` (so ``dest`` is either absent or complete). Offline, or with ``data.download=false``, a missing file
fails with one line naming the URL and the exact path to place the file at.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from zoo.errors import DataError

DATA_DIR_ENV = "ZOO_DATA_DIR"
CHUNK_BYTES = 1 << 20
USER_AGENT = "zoo-data/0.1 (python urllib)"


def data_root(cfg=None) -> Path:
    """``data.root``, else ``$ZOO_DATA_DIR``, else the user cache directory (``~/.cache/zoo`` on Linux)."""
    configured = getattr(cfg, "root", None) if cfg is not None else None
    if configured:
        return Path(configured).expanduser()
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV]).expanduser()
    return user_cache_dir()


def user_cache_dir() -> Path:
    """The per-user cache directory of the zoo (platformdirs when installed, else ``~/.cache/zoo``)."""
    try:
        import platformdirs
    except ImportError:
        return Path.home() / ".cache" / "zoo"
    return Path(platformdirs.user_cache_dir("zoo"))


@dataclass(frozen=True)
class RemoteFile:
    """A file published upstream: its URL and, when known, its checksum as ``"<algorithm>:<hex digest>"``
    (``sha256:...``; ``md5:...`` where the publisher only gives an MD5, as GroupLens does)."""

    url: str
    checksum: str | None = None

    def hasher(self) -> hashlib._Hash | None:
        if not self.checksum:
            return None
        algorithm, _, digest = self.checksum.partition(":")
        if algorithm not in hashlib.algorithms_available or not digest:
            raise ValueError(f"checksum {self.checksum!r} must look like 'sha256:<hex digest>'")
        return hashlib.new(algorithm)


def check_input_file(path: Path, what: str = "file") -> Path:
    """``path`` if it is a file; else a one-line DataError: missing, or a directory where a file is expected."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        raise DataError(f"{what} {path}: is a directory, expected a file")
    raise DataError(f"missing {what}: {path}")


def require_file(path: Path, remote: RemoteFile | None, download: bool) -> Path:
    """``path`` if it exists; else fetch it from ``remote`` (when ``download``); else a one-line DataError."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a file")
    if remote is None:
        raise DataError(f"missing file {path} (it has no upstream URL: place it there)")
    if not download:
        raise DataError(
            f"missing file {path}: download {remote.url} and place it at {path} (or set data.download=true)"
        )
    return fetch(remote, path)


def fetch(remote: RemoteFile, dest: Path, timeout: float = 60.0, progress: bool = True) -> Path:
    """Download ``remote`` to ``dest`` (resuming ``dest.part`` if a previous transfer was interrupted)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    lock = dest.with_name(dest.name + ".lock")
    with _exclusive(lock):
        if dest.is_file():  # another process finished it while we waited for the lock
            return dest
        _stream(remote, part, dest, timeout, progress)
        _verify(remote, part, dest)
        os.replace(part, dest)
    return dest


def _stream(remote: RemoteFile, part: Path, dest: Path, timeout: float, progress: bool) -> None:
    from tqdm.auto import tqdm

    have = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": USER_AGENT}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(remote.url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # the .part already holds the whole file
            return
        raise DataError(f"cannot download {remote.url} (HTTP {err.code}): place the file at {dest}") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise DataError(f"cannot download {remote.url} ({reason}; offline?): place the file at {dest}") from None
    with response:
        resumed = have > 0 and response.status == 206
        if not resumed:
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        received = have
        bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=dest.name, disable=not progress)
        try:
            with open(part, "ab" if resumed else "wb") as out:
                while chunk := response.read(CHUNK_BYTES):
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as err:
            raise DataError(
                f"download of {remote.url} interrupted after {received} bytes ({err}); run again to resume "
                f"{part}, or place the file at {dest}"
            ) from None
        finally:
            bar.close()
    if total is not None and received < total:
        raise DataError(
            f"download of {remote.url} stopped at {received} of {total} bytes; run again to resume {part}, "
            f"or place the file at {dest}"
        )


def _verify(remote: RemoteFile, part: Path, dest: Path) -> None:
    hasher = remote.hasher()
    if hasher is None:
        return
    with open(part, "rb") as f:
        while block := f.read(CHUNK_BYTES):
            hasher.update(block)
    expected = remote.checksum.partition(":")[2].lower()
    if hasher.hexdigest() != expected:
        part.unlink(missing_ok=True)
        raise DataError(
            f"checksum mismatch for {remote.url}: expected {remote.checksum}, got {hasher.name}:{hasher.hexdigest()} "
            f"(partial file removed; the file for {dest} must match)"
        )


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` so that concurrent processes (DDP ranks) download a file once.

    The lock file is removed when the holder is done, whether the download succeeded or failed (offline), so
    no empty ``.lock`` is left behind. A process that was waiting on the removed file notices (its inode is no
    longer the one at ``lock_path``) and locks the path afresh, so two processes never hold it at once."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; downloads are still atomic
        yield
        return
    while True:
        handle = open(lock_path, "a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                same = os.stat(lock_path).st_ino == os.fstat(handle.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the previous holder removed it while we waited: lock the current file
                continue
            try:
                yield
            finally:
                Path(lock_path).unlink(missing_ok=True)  # still holding the lock: nobody else holds this inode
                fcntl.flock(handle, fcntl.LOCK_UN)
            return
        finally:
            handle.close()
