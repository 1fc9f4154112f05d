"""Helpers shared by ``bench.py`` and ``accuracy.py``: the environment record, robust statistics,
resident-memory probes and the writer of ``RESULTS.md`` sections."""

from __future__ import annotations

import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"


def setup_path() -> None:
    """Make ``spat`` (src layout) and ``benchmarks`` importable when run as a script."""
    for p in (ROOT / "src", ROOT):
        if str(p) not in sys.path:
            sys.path.insert(0, str(p))


# ------------------------------------------------------------------------------ environment


def cpu_model() -> str:
    """The CPU's model name (:func:`spat.utils.hardware.cpu_model`)."""
    setup_path()
    from spat.utils.hardware import cpu_model as model

    return model()


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def git_commit() -> str:
    """``git rev-parse HEAD`` (read-only), ``+dirty`` when the work tree differs."""
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=False)
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"],
                               capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip()[:12] + ("+dirty" if dirty.stdout.strip() else "")


def environment(device: Any) -> dict[str, Any]:
    import numpy
    import torch

    env: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "commit": git_commit(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_start": load_average(),
        "device": str(device),
    }
    try:
        import torchvision

        env["torchvision"] = torchvision.__version__
    except ImportError:  # pragma: no cover
        pass
    setup_path()
    from spat.utils.hardware import machine_info

    flags = machine_info(torch.device("cpu"))["cpu_flags"]
    if flags is not None:  # the flags the fast-path decision reads
        env["cpu_flags"] = " ".join(f for f, on in flags.items() if on) or "none"
    if getattr(device, "type", str(device)) == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
    return env


def environment_lines(env: dict[str, Any]) -> list[str]:
    keys = ["date", "commit", "device", "gpu", "cpu", "cpu_flags", "cores", "torch_threads",
            "python", "torch", "torchvision", "numpy", "cuda", "cudnn", "platform",
            "load_average_start", "load_average_end", "command"]
    return [f"- {k}: `{env[k]}`" for k in keys if env.get(k) is not None]


# ------------------------------------------------------------------------------ statistics


def summary(values: list[float]) -> dict[str, float]:
    """Median, quartiles (IQR), min, max and count of ``values``."""
    v = sorted(values)
    if len(v) >= 2:
        q1, _, q3 = statistics.quantiles(v, n=4, method="inclusive")
    else:
        q1 = q3 = v[0]
    return {"median": statistics.median(v), "q1": q1, "q3": q3, "min": v[0], "max": v[-1],
            "n": len(v)}


def fmt_time(s: dict[str, float], unit: float = 1.0, digits: int = 3) -> str:
    """``median [q1–q3]`` in the given unit."""
    return (f"{s['median'] * unit:.{digits}f} [{s['q1'] * unit:.{digits}f}–"
            f"{s['q3'] * unit:.{digits}f}]")


# ------------------------------------------------------------------------------ compute rate


def matmul_gflops(dtype: Any, size: int = 2048, repeats: int = 7) -> float:
    """GFLOP/s of a bare ``size``² × ``size``² ``torch.matmul`` in ``dtype`` on the CPU with
    torch's current thread count, best of ``repeats`` (after one warm-up): the rate this CPU
    attains on dense work, against which a training step's achieved rate is read."""
    import torch

    g = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=g).to(dtype)
    b = torch.randn(size, size, generator=g).to(dtype)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best / 1e9


# ------------------------------------------------------------------------------ memory


def _status_kb(field: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    m = re.search(rf"^{field}:\s+(\d+)\s+kB", text, re.MULTILINE)
    return int(m.group(1)) if m else None


def rss_kb() -> int | None:
    """Current resident set size (kB), Linux."""
    return _status_kb("VmRSS")


def peak_rss_kb() -> int | None:
    """Peak resident set size since the last :func:`reset_peak_rss` (kB), Linux."""
    hwm = _status_kb("VmHWM")
    if hwm is not None:
        return hwm
    try:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    except (ImportError, OSError):  # pragma: no cover
        return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (``echo 5 > /proc/self/clear_refs``)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# ------------------------------------------------------------------------------ RESULTS.md


def write_section(key: str, body: str, path: Path = RESULTS) -> None:
    """Replace (or append) the section between ``<!-- BEGIN key -->`` and ``<!-- END key -->``."""
    begin, end = f"<!-- BEGIN {key} -->", f"<!-- END {key} -->"
    block = f"{begin}\n{body.rstrip()}\n{end}\n"
    text = path.read_text() if path.exists() else "# Benchmark results\n\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip() + "\n\n" + block
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)
