"""A folder's ``.lock`` file: one writer at a time, stale locks of dead processes taken over.

``spat train`` (a new run or a resume) holds ``RUN/.lock`` while it writes the run directory, and
``spat eval`` holds ``OUT/.lock`` while it writes its output folder, so two processes aimed at the
same folder never interleave: the second one stops at once with one line naming the holder.

The lock is an advisory ``flock`` on the file (POSIX), which the kernel releases when the holder
exits in any way — SIGKILL and power cuts included — so a lock left behind by a dead process is
taken over without asking. The file's content (pid, host, start time, command line) is for the
message only. Where ``flock`` is unavailable (Windows) the file is created exclusively and a lock
whose pid is dead on this host is taken over. On a network file system without lock support
two hosts are not kept apart.

:func:`lock_holder` tells, without taking it, whether a lock file is held and by whom: how a
``spat study`` waits for the cells that another process runs.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from spat.errors import FolderBusy, SpatError
from spat.utils.io import read_json_object_or_none

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def describe_holder(holder: dict[str, Any]) -> str:
    """``"pid 12 on host since 2026-01-01T10:00:00+0000 (spat study s.toml)"``."""
    if not holder:
        return "another process"
    cmd = " ".join(str(a) for a in holder.get("argv", []))[:120]
    return (f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('time')}"
            + (f" ({cmd})" if cmd else ""))


def _read_record(path: Path) -> dict[str, Any]:
    return read_json_object_or_none(path) or {}


def lock_holder(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Who holds the lock file ``path``: its record (pid, host, time, argv; ``{}`` while the
    holder has not written it yet), or ``None`` when nobody does — no file, or a file left by a
    process that is gone. Takes nothing: a lock whose recorded pid is dead on this host is free
    without touching it; otherwise a non-blocking shared ``flock`` probe, let go at once, tells
    whether a live holder has it."""
    path = Path(path)
    holder = _read_record(path)
    pid = holder.get("pid")
    if holder.get("host") == socket.gethostname() and isinstance(pid, int) \
            and not _pid_alive(pid):
        return None
    if fcntl is None:  # pragma: no cover - Windows: the exclusive file is the lock
        return holder if path.exists() else None
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return _read_record(path) or holder
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class FolderLock:
    """``folder/.lock`` held by this process; use as a context manager or acquire/release.

    ``what`` names the activity in the refusal message ("the run", "the evaluation output");
    ``name`` is the lock file's name in ``folder`` (default ``.lock``; ``spat study`` holds a
    cell by ``RUN/.study.lock`` beside the run's own lock). After :meth:`acquire`,
    :attr:`took_over` holds the record of a dead holder whose lock was taken over (else
    ``None``).
    """

    def __init__(self, folder: str | os.PathLike[str], what: str = "folder",
                 name: str = LOCK_NAME) -> None:
        self.folder = Path(folder)
        self.path = self.folder / name
        self.what = what
        self.took_over: dict[str, Any] | None = None
        self._fd: int | None = None

    def _read(self) -> dict[str, Any]:
        return _read_record(self.path)

    def _record(self) -> bytes:
        return json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                           "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                           "argv": sys.argv}).encode()

    def _refuse(self, holder: dict[str, Any]) -> FolderBusy:
        e = FolderBusy(f"{self.folder} is in use: {self.what} is being written by "
                       f"{describe_holder(holder)}; wait for it to finish (its lock "
                       f"{self.path} is released when that process ends)")
        e.lock, e.holder = str(self.path), holder
        return e

    def acquire(self) -> FolderLock:
        """Take the lock or raise a one-line :class:`SpatError` naming its holder."""
        if not self.folder.is_dir():
            raise SpatError(f"{self.folder} is not a folder")
        for _ in range(20):
            if fcntl is None:  # pragma: no cover - Windows
                if self._acquire_exclusive():
                    return self
                continue
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise self._refuse(self._read()) from None
            try:  # the file we locked must still be the one at the path (not unlinked meanwhile)
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            previous = self._read()
            if previous.get("pid") not in (None, os.getpid()):
                self.took_over = previous
            os.ftruncate(fd, 0)
            os.pwrite(fd, self._record(), 0)
            os.fsync(fd)
            self._fd = fd
            return self
        raise SpatError(f"could not take the lock {self.path} (it keeps changing)")

    def _acquire_exclusive(self) -> bool:  # pragma: no cover - Windows
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = self._read()
            pid = holder.get("pid")
            if (holder.get("host") == socket.gethostname() and isinstance(pid, int)
                    and not _pid_alive(pid)):
                self.took_over = holder
                self.path.unlink(missing_ok=True)
                return False
            raise self._refuse(holder) from None
        os.write(fd, self._record())
        self._fd = fd
        return True

    def release(self) -> None:
        """Remove the lock file and let go (idempotent)."""
        if self._fd is None:
            return
        try:
            if os.stat(self.path).st_ino == os.fstat(self._fd).st_ino:
                self.path.unlink()
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class FolderClaim:
    """An output folder held for writing: created if needed (parents too), locked; on release
    the lock goes and the folders this claim created are removed again if still empty — so a
    refusal after the claim leaves nothing behind."""

    def __init__(self, folder: str | os.PathLike[str], what: str = "folder") -> None:
        self.folder = Path(folder)
        self.lock = FolderLock(self.folder, what)
        self.created: list[Path] = []

    def acquire(self) -> FolderClaim:
        missing = [p for p in (self.folder, *self.folder.parents) if not p.exists()]
        try:  # a refusal midway (a name too long, a permission) removes what was made
            for p in reversed(missing):
                try:
                    p.mkdir()
                    self.created.append(p)
                except FileExistsError:
                    pass
            self.lock.acquire()
        except BaseException:
            self._remove_created()
            raise
        return self

    def _remove_created(self) -> None:
        for p in reversed(self.created):
            try:
                p.rmdir()
            except OSError:
                break
        self.created = []

    def release(self) -> None:
        self.lock.release()
        self._remove_created()

    def __enter__(self) -> FolderClaim:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
