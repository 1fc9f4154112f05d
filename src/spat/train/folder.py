"""The run folder of a new run: its name, the claim (``mkdir`` + ``RUN/.lock``), and its first
files (``config.json``, ``env.json``, ``data.json``), written so that a folder without
``config.json`` is never taken for a run."""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

from spat.config import TrainConfig
from spat.data import DataBundle
from spat.errors import SpatError
from spat.utils.env import environment
from spat.utils.hardware import FastPath
from spat.utils.io import atomic_write_text

#: What :func:`create_run_dir` writes before ``config.json``.
_CREATION_FILES = frozenset({"env.json", "data.json"})


def default_run_name(cfg: TrainConfig) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{stamp}_{cfg.dataset}_{cfg.model}_{cfg.method}_s{cfg.seed}"


def run_content(run_dir: Path) -> list[Path]:
    """What a run directory holds besides a lock file. A folder without ``config.json`` that
    holds only what a new run writes before it (and hidden temporary files) is a creation that
    was killed midway, not a run: nothing, so a new run may take the folder over."""
    from spat.utils.lock import LOCK_NAME

    content = [c for c in run_dir.iterdir() if c.name != LOCK_NAME]
    if all(c.name in _CREATION_FILES or c.name.startswith(".") for c in content):
        return []
    return content


def check_new_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Refuse a new run at ``run_dir`` when its parent is not a usable output folder, or when a
    run (or a file) is already there and ``overwrite`` is not given."""
    from spat.validation import check_output_dir

    check_output_dir(run_dir.parent, "--out-dir")
    if run_dir.exists() and not run_dir.is_dir():
        raise SpatError(f"run directory {run_dir} exists and is not a directory")
    if run_dir.is_dir() and run_content(run_dir) and not overwrite:
        raise SpatError(f"run directory {run_dir} already exists "
                        f"(use --resume {run_dir} to continue it or --overwrite to replace it)")


class Claim:
    """The run directory this process holds: its lock, and the folders it created.

    On exit the lock is released; the folders this process created (the run directory, and
    parents of it such as a new ``--out-dir``) and left empty (a refusal between the claim and
    the first file) are removed, so a refusal leaves nothing behind.
    """

    def __init__(self) -> None:
        self.held: Any = None  # a FolderClaim (new run) or a FolderLock (resume)

    def take(self, run_dir: Path, *, new: bool, overwrite: bool = False) -> None:
        """Claim ``run_dir``: for a new run ``mkdir`` (atomic: of two processes racing for
        one name, one creates it) then the lock; for a resume the lock alone."""
        from spat.utils.lock import FolderClaim, FolderLock

        if new:
            check_new_run_dir(run_dir, overwrite)
            self.held = FolderClaim(run_dir, "the run").acquire()
        elif not run_dir.is_dir():
            raise SpatError(f"cannot resume {run_dir}: it is not a run directory (no such "
                            f"folder)")
        else:
            self.held = FolderLock(run_dir, "the run").acquire()
        if new and run_content(run_dir) and not overwrite:  # another process won the race
            raise SpatError(f"run directory {run_dir} already exists "
                            f"(use --resume {run_dir} to continue it or --overwrite to replace "
                            f"it)")

    def create_run(self, run_dir: Path, files: dict[str, str], *, overwrite: bool) -> None:
        """Claim ``run_dir`` for a new run and fill it with ``files`` (:func:`create_run_dir`)."""
        self.take(run_dir, new=True, overwrite=overwrite)
        create_run_dir(run_dir, files)

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.held is not None:
            self.held.release()  # a FolderClaim also removes the folders it made, if empty


def new_run_files(cfg: TrainConfig, device: Any, fast_path: FastPath, data: DataBundle
                  ) -> dict[str, str]:
    """The first files of a new run (name -> text): the resolved configuration, the
    environment with the fast path chosen, the data description."""
    return {"config.json": json.dumps(cfg.to_dict(), indent=2),
            "env.json": json.dumps({**environment(device), "fast_path": fast_path.to_dict()},
                                   indent=2),
            "data.json": json.dumps(data_record(data), indent=2)}


def data_record(data: DataBundle) -> dict[str, Any]:
    """``data.json``: the dataset description and the split sizes."""
    info = data.info
    return {**dataclasses.asdict(info), "train": len(data.train), "val": len(data.val),
            "test": len(data.test)}


def create_run_dir(run_dir: Path, files: dict[str, str]) -> None:
    """Fill the claimed (locked) ``run_dir`` with ``files`` (name -> text).

    With ``--overwrite`` the old content is moved aside first and deleted afterwards. Each file
    is written atomically, ``config.json`` last: a folder without it is not a run (resume and
    eval refuse it), so a crash in between never leaves something that looks complete.
    """
    old: Path | None = None
    content = run_content(run_dir)
    if content:
        old = run_dir.parent / f".{run_dir.name}.old.{secrets.token_hex(4)}.tmp"
        old.mkdir()
        for c in content:
            os.rename(c, old / c.name)
    try:
        for name in sorted(files, key=lambda n: n == "config.json"):
            atomic_write_text(run_dir / name, files[name])
    except BaseException:
        for name in files:
            (run_dir / name).unlink(missing_ok=True)
        if old is not None:  # put the old run back
            for c in old.iterdir():
                os.rename(c, run_dir / c.name)
            old.rmdir()
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
