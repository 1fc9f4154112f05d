"""The device a command runs on, and the environment record written beside every result."""

from __future__ import annotations

import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from spat._version import __version__
from spat.errors import SpatError
from spat.utils.distributed import SINGLE, DistContext


def resolve_device(name: str, dist: DistContext = SINGLE) -> torch.device:
    """``auto``: CUDA when present (the rank's local GPU under torchrun), else CPU.

    Valid names: auto, cpu, cuda, cuda:N, mps; anything else (or a device that is not there)
    is a one-line :class:`SpatError`.
    """
    valid = "auto, cpu, cuda, cuda:N, mps"
    if not isinstance(name, str) or not (name in ("auto", "cpu", "cuda", "mps") or (
            name.startswith("cuda:") and name[5:].isdigit())):
        raise SpatError(f"unknown device {name!r} (valid: {valid})")
    if name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise SpatError(f"device {name!r} requested but no CUDA GPU is available")
        if int(name[5:]) >= torch.cuda.device_count():
            raise SpatError(f"device {name!r} requested but there are only "
                            f"{torch.cuda.device_count()} CUDA device(s)")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise SpatError("device 'cuda' requested but no CUDA GPU is available")
        return torch.device("cuda", dist.local_rank)
    if name == "mps" and not torch.backends.mps.is_available():
        raise SpatError("device 'mps' requested but MPS is not available")
    return torch.device(name)


def environment(device: torch.device) -> dict[str, Any]:
    """Versions, device, the machine (:func:`spat.utils.hardware.machine_info`: CPU model,
    cores, the CPU flags the fast path reads, GPU name) and git commit: recorded beside every
    result."""
    import numpy

    from spat.utils.hardware import cpu_model, machine_info

    env: dict[str, Any] = {
        "spat": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else
        cpu_model(),
        "machine": machine_info(device),
        "cuda": torch.version.cuda,
        "cpu_threads": torch.get_num_threads(),
        "git_commit": _git_commit(),
        "argv": sys.argv,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    try:  # the installed version, without importing torchvision (seconds of start-up)
        from importlib.metadata import PackageNotFoundError, version

        env["torchvision"] = version("torchvision")
    except PackageNotFoundError:  # pragma: no cover
        pass
    return env


def _git_commit() -> str | None:
    """HEAD of the checkout holding the package, ``+dirty`` when ``src/spat`` has changes."""
    here = Path(__file__).resolve().parent.parent  # src/spat
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=False)
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--", "."],
                               capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
