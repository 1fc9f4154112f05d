"""Atomic writes (temporary file in the same directory, fsync, then ``os.replace``) and JSON lines.

A reader never sees a half-written file: either the old content or the new one. The final file
gets the permissions of a file created with ``open()``: ``0o666 & ~umask`` (644 under the usual
umask 022), not the 600 of :func:`tempfile.mkstemp`, so colleagues on a shared filesystem can
read the records.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def current_umask() -> int:
    """The process's umask. Read from ``/proc/self/status`` where it is there (Linux), so no
    other thread ever sees a changed umask; elsewhere set-and-restore with :func:`os.umask`."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode ``open()`` gives a new file: ``0o666 & ~umask``."""
    return 0o666 & ~current_umask()


def fsync_path(path: str | os.PathLike[str]) -> None:
    """fsync a file or a directory, so that its content (a file) or its entries (a directory:
    a rename or a new file in it) survive a power loss. Best effort: an OS or filesystem that
    refuses to open or fsync a directory is skipped silently."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (same-directory temp file + fsync + rename).

    The file ends with mode ``0o666 & ~umask``, set on the temporary file before the rename,
    so the final name never shows other permissions.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), file_mode())
            else:  # pragma: no cover - Windows: only the read-only bit exists
                os.chmod(tmp, file_mode())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_path(path.parent)  # make the rename itself durable


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def append_jsonl(path: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Append one JSON object as a compact line (no spaces after separators; flushed and
    fsynced)."""
    path = Path(path)
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl_lines(path: str | os.PathLike[str]) -> list[tuple[Any, str]]:
    """Each JSON value of a JSON-lines file with its exact line (without the newline).

    A missing file reads as empty; blank lines are skipped. The *torn-last-line rule*: a process
    killed mid-append leaves its last line incomplete, so a last line that is not valid JSON
    (or not UTF-8) is ignored. A bad line anywhere else is damage, not a crash: a one-line
    :class:`~spat.errors.SpatError` naming the file and the line. An unreadable file is one too.
    """
    from spat.errors import SpatError
    from spat.validation import loads_json, one_line

    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as e:
        raise SpatError(f"{path} is unreadable ({type(e).__name__}: "
                        f"{one_line(e, 160)})") from None
    raw = [(i + 1, b) for i, b in enumerate(data.split(b"\n")) if b.strip()]
    out: list[tuple[Any, str]] = []
    for k, (lineno, b) in enumerate(raw):
        try:
            line = b.decode("utf-8").rstrip("\r")
            out.append((loads_json(line), line))
        except (UnicodeDecodeError, json.JSONDecodeError):
            if k == len(raw) - 1:
                break  # torn by a crash mid-append
            raise SpatError(f"{path} line {lineno} is not valid JSON (only the last line may be "
                            f"incomplete)") from None
    return out


def read_jsonl(path: str | os.PathLike[str],
               check: Callable[[Any, str], dict[str, Any]] | None = None) -> list[Any]:
    """The values of a JSON-lines file (rules of :func:`read_jsonl_lines`). With ``check``,
    each value passes through ``check(value, where)`` (``where`` names the file and the record,
    e.g. :func:`spat.validation.check_metrics_record`), which returns it or raises."""
    values = [v for v, _ in read_jsonl_lines(path)]
    if check is None:
        return values
    return [check(v, f"{path} record {i + 1}") for i, v in enumerate(values)]


def nan_to_none(v: Any) -> float | None:
    """``v`` as a Python float, or ``None`` for ``None`` and NaN (JSON has no NaN; a missing
    value is ``null``). Infinities pass through (see :func:`json_safe` for a whole document)."""
    if v is None:
        return None
    f = float(v)
    return None if math.isnan(f) else f


def json_safe(obj: Any) -> Any:
    """``obj`` made writable as strict JSON: mappings (keys as strings), lists/tuples and numpy
    arrays recursively; numpy scalars as Python numbers; NaN and ±inf as ``None`` (``null``)."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    tolist = getattr(obj, "tolist", None)  # numpy arrays and scalars, without importing numpy
    if tolist is not None and type(obj).__module__ == "numpy":
        return json_safe(tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def read_json_object_or_none(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The JSON object in ``path``, or ``None`` when the file is missing, unreadable, not JSON
    or not an object (for optional records whose absence is an answer; files that must be
    valid go through :func:`spat.validation.read_json_object`)."""
    from spat.validation import loads_json

    try:
        data = loads_json(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # not JSON, not UTF-8, nested too deeply
        return None
    return data if isinstance(data, dict) else None
