"""Crash-safe checkpoints: weights as safetensors, everything else ``weights_only``-loadable.

Layout under a run's ``checkpoints/`` folder::

    epoch_0007/model.safetensors   model weights (and buffers) — no code, no pickle
    epoch_0007/state.pt            optimizer, RNG states, counters, config, metrics: tensors and
                                   plain Python values only, read with torch.load(weights_only=True)
    last.json                      {"tag": "epoch_0007"} — the newest complete checkpoint
    best.json                      {"tag": "epoch_0005", ...} — best validation robust accuracy

A checkpoint folder is written under a temporary name and renamed into place only when complete
(a rename is atomic on POSIX), and the pointer files are replaced atomically afterwards, so a
process killed at any moment leaves the previous checkpoint intact and pointed to.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from spat.errors import SpatError
from spat.utils.io import atomic_write_text

WEIGHTS = "model.safetensors"
STATE = "state.pt"


def _fsync_file(path: Path) -> None:
    with path.open("rb") as f:
        os.fsync(f.fileno())


def save_checkpoint(
    root: str | os.PathLike[str],
    tag: str,
    weights: dict[str, torch.Tensor],
    state: dict[str, Any],
) -> Path:
    """Write ``root/tag/{model.safetensors,state.pt}`` atomically; returns the folder.

    ``weights``: a model ``state_dict`` (tensors are copied to CPU and made contiguous).
    ``state``: tensors and plain values only (dict/list/str/int/float/bool/None).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / tag
    tmp = Path(tempfile.mkdtemp(prefix=f".{tag}.", suffix=".tmp", dir=root))
    try:
        cpu = {k: v.detach().to("cpu").contiguous() for k, v in weights.items()}
        save_file(cpu, str(tmp / WEIGHTS))
        torch.save(state, tmp / STATE)
        for f in (WEIGHTS, STATE):
            _fsync_file(tmp / f)
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def set_pointer(root: str | os.PathLike[str], name: str, tag: str, **extra: Any) -> None:
    """Atomically point ``root/<name>.json`` (e.g. "last", "best") at checkpoint ``tag``."""
    atomic_write_text(Path(root) / f"{name}.json", json.dumps({"tag": tag, **extra}, indent=2))


def read_pointer(root: str | os.PathLike[str], name: str) -> str | None:
    """The tag that ``root/<name>.json`` points to, or None if there is no such pointer."""
    p = Path(root) / f"{name}.json"
    if not p.exists():
        return None
    try:
        return str(json.loads(p.read_text(encoding="utf-8"))["tag"])
    except (json.JSONDecodeError, KeyError) as e:
        raise SpatError(f"checkpoint pointer {p} is corrupted ({e})") from None


def prune(root: str | os.PathLike[str], keep: set[str]) -> None:
    """Delete checkpoint folders (and stale temporary folders) not named in ``keep``."""
    root = Path(root)
    if not root.is_dir():
        return
    for child in root.iterdir():
        if child.is_dir() and child.name not in keep:
            shutil.rmtree(child, ignore_errors=True)


def resolve(path: str | os.PathLike[str], which: str = "best") -> Path:
    """The checkpoint folder for a run directory, a ``checkpoints/`` folder or a folder itself.

    ``which`` ("best" or "last") picks the pointer when given a run or checkpoints folder; "best"
    falls back to "last" when the run has no best pointer yet.
    """
    p = Path(path)
    if (p / WEIGHTS).exists():
        return p
    for root in (p / "checkpoints", p):
        if root.is_dir():
            for name in (which, "last") if which == "best" else (which,):
                tag = read_pointer(root, name)
                if tag is not None and (root / tag / WEIGHTS).exists():
                    return root / tag
    raise SpatError(f"no checkpoint found at {p} (expected a run directory or a folder holding "
                    f"{WEIGHTS})")


def load_state(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """``state.pt`` with ``weights_only=True``; anything needing arbitrary unpickling is refused."""
    path = Path(folder) / STATE
    if not path.exists():
        raise SpatError(f"checkpoint state file missing: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SpatError(
            f"refusing to load {path}: it holds arbitrary pickled objects, which could run code "
            f"({first[:160]})"
        ) from None
    except (RuntimeError, EOFError, OSError) as e:
        raise SpatError(f"checkpoint state {path} is unreadable or corrupted ({e})") from None


def load_weights(folder: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The model weights of a checkpoint folder (safetensors: data only, never code)."""
    path = Path(folder) / WEIGHTS
    if not path.exists():
        raise SpatError(f"checkpoint weights missing: {path}")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise SpatError(f"checkpoint weights {path} are unreadable or corrupted ({e})") from None
