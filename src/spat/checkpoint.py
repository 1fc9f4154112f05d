"""Crash-safe checkpoints: weights as safetensors, everything else ``weights_only``-loadable.

Layout under a run's ``checkpoints/`` folder::

    epoch_0007/model.safetensors   model weights (and buffers) — no code, no pickle
    epoch_0007/state.pt            optimizer, RNG states, counters, config: tensors and plain
                                   Python values only, read with torch.load(weights_only=True)
    last.json                      {"tag": "epoch_0007"} — the newest complete checkpoint
    best.json                      {"tag": "epoch_0005", ...} — best validation robust accuracy

Crash safety (a process killed with SIGKILL at any instant, or a power cut):

* a checkpoint folder is written under a temporary name (``.epoch_0007.XXXX.tmp``), both files
  are fsynced, the temporary folder is fsynced, then renamed into place (atomic on POSIX) and
  the parent folder is fsynced so the rename itself is durable;
* the pointer files are replaced atomically (temp file + fsync + ``os.replace`` + directory
  fsync) only after the folder they name is complete, so ``last.json`` always names a complete
  checkpoint — the previous one until the new one is fully on disk;
* leftovers of an interrupted save (temporary folders, a folder renamed into place whose pointer
  was never written) are never read: readers go through the pointers, and
  :func:`clean_stale` removes them when a run is resumed.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import secrets
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from spat.errors import SpatError
from spat.utils.io import atomic_write_bytes, atomic_write_text, fsync_path
from spat.validation import loads_json, one_line

WEIGHTS = "model.safetensors"
STATE = "state.pt"
#: Checkpoint folder names: ``epoch_0007`` (1-based epoch, zero-padded).
TAG_RE = re.compile(r"epoch_\d{4,}")


def epoch_tag(epoch: int) -> str:
    """The folder name of the checkpoint taken after (1-based) ``epoch``: ``epoch_0007``."""
    return f"epoch_{epoch:04d}"


def tag_epoch(tag: str) -> int:
    """The (1-based) epoch of a checkpoint folder name; ``SpatError`` if it is not one."""
    if not TAG_RE.fullmatch(tag):
        raise SpatError(f"not a checkpoint name: {tag!r} (expected epoch_NNNN)")
    return int(tag.split("_", 1)[1])


def _fresh_dir(root: Path, prefix: str) -> Path:
    """A new empty folder ``root/<prefix>XXXXXXXX.tmp`` (permissions from the umask)."""
    while True:
        p = root / f"{prefix}{secrets.token_hex(4)}.tmp"
        try:
            p.mkdir()
            return p
        except FileExistsError:
            continue


def save_checkpoint(
    root: str | os.PathLike[str],
    tag: str,
    weights: dict[str, torch.Tensor],
    state: dict[str, Any],
) -> Path:
    """Write ``root/tag/{model.safetensors,state.pt}`` atomically; returns the folder.

    ``weights``: a model ``state_dict`` (tensors are copied to CPU and made contiguous).
    ``state``: tensors and plain values only (dict/list/str/int/float/bool/None).
    An existing ``root/tag`` (left by an interrupted run that is being redone; never the folder a
    pointer names) is moved aside atomically before the new folder is renamed into place.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / tag
    tmp = _fresh_dir(root, f".{tag}.")
    try:
        cpu = {k: v.detach().to("cpu").contiguous() for k, v in weights.items()}
        # through the atomic writer: safetensors' save_file creates mode 600, not 0o666 & ~umask
        atomic_write_bytes(tmp / WEIGHTS, safetensors_bytes(cpu))
        torch.save(state, tmp / STATE)
        for f in (WEIGHTS, STATE):
            fsync_path(tmp / f)
        fsync_path(tmp)
        if final.exists():
            old = _fresh_dir(root, f".{tag}.old.")
            os.rename(final, old / tag)
            shutil.rmtree(old, ignore_errors=True)
        os.rename(tmp, final)
        fsync_path(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def set_pointer(root: str | os.PathLike[str], name: str, tag: str, **extra: Any) -> None:
    """Atomically point ``root/<name>.json`` (e.g. "last", "best") at checkpoint ``tag``."""
    atomic_write_text(Path(root) / f"{name}.json", json.dumps({"tag": tag, **extra}, indent=2))


def read_pointer(root: str | os.PathLike[str], name: str) -> str | None:
    """The tag that ``root/<name>.json`` points to, or None if there is no such pointer.

    A pointer that is not JSON, has no tag, or names something other than a checkpoint folder
    (``epoch_NNNN``: no path separators, no ``..``) is a one-line ``SpatError``.
    """
    p = Path(root) / f"{name}.json"
    if not p.exists():
        return None
    try:
        tag = loads_json(p.read_text(encoding="utf-8"))["tag"]
    except (ValueError, KeyError, TypeError) as e:  # not JSON or UTF-8, too deep, no tag
        raise SpatError(f"checkpoint pointer {p} is corrupted ({type(e).__name__}: "
                        f"{one_line(e, None)})") from None
    if not isinstance(tag, str) or not TAG_RE.fullmatch(tag):
        raise SpatError(f"checkpoint pointer {p} is corrupted (tag {tag!r} is not epoch_NNNN)")
    return tag


def prune(root: str | os.PathLike[str], keep: set[str]) -> None:
    """Delete checkpoint folders (and stale temporary folders) not named in ``keep``."""
    root = Path(root)
    if not root.is_dir():
        return
    for child in root.iterdir():
        if child.is_dir() and child.name not in keep:
            shutil.rmtree(child, ignore_errors=True)


def clean_stale(root: str | os.PathLike[str]) -> list[str]:
    """Remove what an interrupted save can leave in ``root``; returns the names removed.

    That is: temporary folders and files (``.*.tmp``), and checkpoint folders newer than the one
    ``last.json`` names (renamed into place, but the process died before the pointer moved).
    Folders named by ``last.json`` or ``best.json`` are never touched.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    last = read_pointer(root, "last")
    best = read_pointer(root, "best")
    keep = {t for t in (last, best) if t is not None}
    newest = tag_epoch(last) if last is not None else 0
    removed = []
    for child in sorted(root.iterdir()):
        name = child.name
        stale = name.startswith(".") and name.endswith(".tmp")
        if not stale and child.is_dir() and TAG_RE.fullmatch(name) and name not in keep:
            stale = tag_epoch(name) > newest
        if stale:
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
            removed.append(name)
    return removed


#: What ``--which`` accepts (``spat eval``, ``spat analyze``, ``spat compare``): one rule.
WHICH_HELP = ("checkpoint of a run directory: best (by validation robust accuracy; the last one "
              "while the run has no best yet), last, or a folder name epoch_NNNN")


def check_which(which: str) -> str:
    """``which`` if it names a checkpoint (best, last or epoch_NNNN), else a one-line
    :class:`SpatError` listing the valid forms."""
    if which in ("best", "last") or TAG_RE.fullmatch(which):
        return which
    raise SpatError(f"unknown checkpoint {which!r} for --which (valid: best, last, epoch_NNNN)")


def available(root: str | os.PathLike[str]) -> list[str]:
    """The complete checkpoint folders (``epoch_NNNN`` holding weights) in ``root``, oldest
    first."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(c.name for c in root.iterdir()
                  if TAG_RE.fullmatch(c.name) and (c / WEIGHTS).is_file())


def resolve(path: str | os.PathLike[str], which: str = "best") -> Path:
    """The checkpoint folder for a run directory, a ``checkpoints/`` folder or a folder itself.

    ``which`` ("best", "last" or a folder name ``epoch_NNNN``, see :func:`check_which`) picks
    the checkpoint when given a run or checkpoints folder; "best" falls back to "last" when the
    run has no best pointer yet. A pointer naming a folder that is gone (pruned, deleted) and an
    ``epoch_NNNN`` that is not there are one-line errors naming the checkpoints that exist.
    """
    check_which(which)
    p = Path(path)
    if (p / WEIGHTS).exists():
        return p
    for root in (p / "checkpoints", p):
        if not root.is_dir():
            continue
        have = available(root)
        listed = ", ".join(have) or "none"
        if TAG_RE.fullmatch(which):
            if which in have:
                return root / which
            if have:
                raise SpatError(f"checkpoint {which} not found in {root} (available: {listed})")
            continue
        for name in (which, "last") if which == "best" else (which,):
            tag = read_pointer(root, name)
            if tag is None:
                continue
            if tag in have:
                return root / tag
            if (root / tag).is_dir():
                raise SpatError(f"{root / tag / WEIGHTS} is missing: {root / (name + '.json')} "
                                f"names checkpoint {tag}, whose folder has no weights file "
                                f"(deleted?); available: {listed} (pick one with --which "
                                f"epoch_NNNN)")
            raise SpatError(f"{root / (name + '.json')} names checkpoint {tag}, which is missing "
                            f"from {root} (pruned or deleted?); available: {listed} (pick one "
                            f"with --which epoch_NNNN)")
    raise SpatError(f"no checkpoint found at {p} (expected a run directory or a folder holding "
                    f"{WEIGHTS})")


def _unpickling_detail(e: BaseException) -> str:
    """The informative part of torch's multi-paragraph weights-only error, on one line."""
    text = one_line(e, None)
    m = re.search(r"(?:Unsupported global: |unsupported )GLOBAL ([\w.]+)", text)
    if m:
        return f"it references {m.group(1)}"
    m = re.search(r"WeightsUnpickler error: (.+?)(?: Check the documentation|$)", text)
    if m:
        return m.group(1).strip()[:160]
    return text[:160] or type(e).__name__


def _load_failure(e: BaseException) -> str:
    """Why a ``state.pt`` could not be read, on one line with a detail that is never empty (a
    truncated pickle ends in a bare ``EOFError()``); torch's advice paragraphs dropped."""
    if isinstance(e, PermissionError | IsADirectoryError):  # the file, not its content
        return e.strerror or type(e).__name__
    text = re.split(r"\. (?:This is an internal|The file might be corrupted)",
                    one_line(e, None))[0]
    detail = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return f"truncated or not a torch checkpoint ({detail[:160]})"


def load_state(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """``state.pt`` with ``weights_only=True``; anything needing arbitrary unpickling is refused.

    Only tensors and plain containers/values can come out of it: a file that would construct
    another object or call a function (``os.system``, ``open``, ...) is refused *before* anything
    is called, with a one-line ``SpatError``. A truncated or garbled file is a ``SpatError`` too.
    """
    path = Path(folder) / STATE
    if not path.exists():
        raise SpatError(f"checkpoint state file missing: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4" on crafted files
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise SpatError(
            f"refusing to load {path}: it is not a plain tensors-and-values file and unpickling "
            f"it could run code ({_unpickling_detail(e)})"
        ) from None
    except Exception as e:  # truncation, random bytes: EOFError, RuntimeError from the zip
        # reader, IndexError, struct.error, ... from the unpickler (nothing ran: weights_only)
        raise SpatError(f"checkpoint state {path} is unreadable or corrupted: "
                        f"{_load_failure(e)}") from None
    if not isinstance(state, dict):
        raise SpatError(f"checkpoint state {path} is not a dictionary (got "
                        f"{type(state).__name__})")
    return state


def load_weights(folder: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The model weights of a checkpoint folder, or of a safetensors file given by its path
    (data only, never code).

    The one loader of weights (resume, eval, analyze, compare, export all come here): weights
    holding NaN or inf are refused with a one-line ``SpatError`` naming the tensor, so no
    command trains on, evaluates or exports a broken model.
    """
    from spat.validation import check_finite_tensors

    path = Path(folder)
    path = path if path.is_file() else path / WEIGHTS
    if not path.exists():
        raise SpatError(f"checkpoint weights missing: {path}")
    try:
        weights = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise SpatError(f"checkpoint weights {path} are unreadable or corrupted "
                        f"({one_line(e, 200)})") from None
    except Exception as e:  # anything else a corrupted file provokes in the parser
        raise SpatError(f"checkpoint weights {path} are unreadable or corrupted "
                        f"({type(e).__name__}: {one_line(e, 160)})") from None
    check_finite_tensors(weights, str(path))
    return weights


#: Config fields that define the network a checkpoint's weights belong to.
ARCHITECTURE_FIELDS = ("dataset", "model", "head", "cosine_scale")


def check_compatible(model: torch.nn.Module, weights: dict[str, torch.Tensor],
                     state: dict[str, Any], where: Path | str, *, cfg: Any = None,
                     num_classes: int | None = None) -> None:
    """Refuse a checkpoint of another architecture or number of classes, in one line.

    Compares the weights' names and shapes with ``model``'s; with ``cfg`` (a
    :class:`spat.config.TrainConfig`) also the fields of :data:`ARCHITECTURE_FIELDS`
    recorded in the checkpoint (a cosine head and a linear head have the same shapes), and with
    ``num_classes`` the recorded number of classes.
    """
    saved = state.get("config") if isinstance(state.get("config"), dict) else {}
    assert isinstance(saved, dict)
    if cfg is not None:
        for key in ARCHITECTURE_FIELDS:
            if key in saved and saved[key] != getattr(cfg, key):
                raise SpatError(
                    f"checkpoint {where} was trained with {key.replace('_', ' ')} "
                    f"{saved[key]!r} but the configuration says {getattr(cfg, key)!r} (was the "
                    f"run's config.json edited? a checkpoint only fits the network it was "
                    f"trained as)"
                )
    saved_k = state.get("num_classes")
    if num_classes is not None and saved_k is not None and int(saved_k) != num_classes:
        raise SpatError(f"checkpoint {where} has {saved_k} classes but the data has "
                        f"{num_classes}")
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    extra = sorted(set(weights) - set(own))
    wrong = sorted(k for k in set(own) & set(weights) if own[k].shape != weights[k].shape)
    if missing or extra or wrong:
        detail = (f"missing {missing[:2]}" if missing else f"unexpected {extra[:2]}" if extra
                  else f"shape of {wrong[0]} is {tuple(weights[wrong[0]].shape)}, "
                       f"expected {tuple(own[wrong[0]].shape)}")
        raise SpatError(
            f"checkpoint {where} does not fit this model (it was trained as model "
            f"{saved.get('model')!r}, head {saved.get('head')!r}, {saved_k} classes; "
            f"{detail})"
        )
