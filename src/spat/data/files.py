"""File helpers for the dataset loaders: cached md5 checks, missing-file errors, safe unpickling."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from spat.errors import SpatError
from spat.validation import one_line

# (resolved path, inode, size in bytes, mtime in ns) -> md5 hex digest
_MD5_CACHE: dict[tuple[str, int, int, int], str] = {}


def md5_of(path: Path) -> str:
    """The md5 hex digest of the file at ``path``.

    Cached per (path, inode, size, mtime), so a file is hashed once per process unless it
    changes (hashing runs at roughly 500 MB/s).
    """
    st = path.stat()
    key = (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    digest = _MD5_CACHE.get(key)
    if digest is None:
        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, "md5").hexdigest()
        _MD5_CACHE[key] = digest
    return digest


def require_file(path: Path, what: str, hint: str) -> Path:
    """``path`` if it is a file, else a ``SpatError`` naming it and saying how to get it."""
    if not path.is_file():
        raise SpatError(f"{what} file not found: {path} ({hint})")
    return path


def verify_md5(path: Path, expected: str) -> None:
    """Raise ``SpatError`` naming ``path`` and both digests unless its md5 is ``expected``."""
    actual = md5_of(path)
    if actual != expected:
        raise SpatError(
            f"checksum mismatch for {path}: md5 {actual}, expected {expected} (the file is "
            "corrupted or not the official release; delete it and download it again)"
        )


def files_ok(md5s: dict[Path, str]) -> bool:
    """Whether every file in ``md5s`` exists and has its expected md5."""
    return all(p.is_file() and md5_of(p) == m for p, m in md5s.items())


# --------------------------------------------------------------------------- restricted unpickler


def _numpy_reconstruct() -> Any:
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


_BUILTINS = {"dict": dict, "list": list, "str": str, "bytes": bytes, "int": int}
# Python 2 pickles (the official CIFAR files) name the module ``__builtin__``.
_ALLOWED_MODULES = ("builtins", "__builtin__")
_RECONSTRUCT_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds only plain containers and numpy arrays.

    Allowed globals: ``dict``, ``list``, ``str``, ``bytes``, ``int`` and numpy's array
    reconstruction (``numpy[._]core.multiarray._reconstruct``, ``numpy.ndarray``,
    ``numpy.dtype``). Any other global (``os.system``, ``builtins.eval``, ...) raises
    ``SpatError`` before it is called, so a malicious file cannot run code. Python 2 strings are
    read as ``bytes`` (``encoding="bytes"``), as the official CIFAR pickles need.
    """

    def __init__(self, file: BinaryIO, source: str) -> None:
        super().__init__(file, encoding="bytes")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        if module in _ALLOWED_MODULES and name in _BUILTINS:
            return _BUILTINS[name]
        if module in _RECONSTRUCT_MODULES and name == "_reconstruct":
            return _numpy_reconstruct()
        if module == "numpy" and name == "ndarray":
            return np.ndarray
        if module == "numpy" and name == "dtype":
            return np.dtype
        raise SpatError(
            f"refusing to unpickle {self._source}: it references {module}.{name}, and only "
            "plain containers and numpy arrays are allowed (the file is not an official one)"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise SpatError(f"refusing to unpickle {self._source}: it uses persistent ids")


def safe_unpickle(path: Path) -> Any:
    """Load the pickle at ``path`` with :class:`RestrictedUnpickler`.

    Any failure (a refused global, a truncated or malformed file) is a one-line ``SpatError``.
    """
    try:
        with open(path, "rb") as f:
            return RestrictedUnpickler(f, str(path)).load()
    except SpatError:
        raise
    except Exception as e:  # any parse failure means a bad file
        raise SpatError(
            f"cannot read {path}: not a valid pickle ({type(e).__name__}: {one_line(e, None)})"
        ) from e


def existing_paths(root: Path) -> set[Path]:
    """Every file and folder under ``root`` (and ``root`` itself) that exists now."""
    root = Path(root)
    if not root.exists():
        return set()
    found = {root}
    for p in root.rglob("*"):
        found.add(p)
    return found


def remove_new_paths(root: Path, before: set[Path]) -> list[Path]:
    """Delete what appeared under ``root`` since ``before`` (:func:`existing_paths`): the
    partial archive and the files extracted from it by a download that failed. Files that were
    there before are kept. Returns what was removed."""
    import shutil

    removed = []
    for p in sorted(existing_paths(root) - before, key=lambda q: len(q.parts)):
        if not (p.exists() or p.is_symlink()):
            continue  # inside a folder removed already
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed
