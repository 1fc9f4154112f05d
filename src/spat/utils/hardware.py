"""What the processor can do fast, and the training fast path chosen from it.

Three settings decide how a training step runs; each is ``"auto"`` by default and resolved per
device when the run starts, with the reason recorded in the run's ``env.json`` (``fast_path``):

* ``amp`` — bf16 autocast for the training adversary and the outer step. Candidates: on CUDA
  bf16 and fp32; on a CPU bf16 only where the CPU executes bf16 natively (x86 AVX512-BF16 or
  AMX-BF16; emulated bf16 is several times slower than fp32 and is not tried), else fp32 alone.
  Losses, the attack objectives and the cosine head are computed in float32 under autocast, and
  evaluation attacks (validation, final test, ``spat eval``) never run under autocast.
* ``channels_last`` — NHWC memory format for the model and its inputs. Candidates: NCHW and
  NHWC on CPU and CUDA; NCHW elsewhere (MPS). ``spat eval`` of a run resolves the run's switch
  with the static rule below for its own device (NHWC on CPU and CUDA) and evaluates in fp32
  (:func:`spat.evaluation.evaluate_run.evaluate_run`).
* ``compile`` — ``torch.compile`` of the training model. On a CPU ``auto`` is off: on this
  project's CPU benchmark the compiled SPAT step (inductor) was slower than the eager one even
  after 13–265 s of compilation (the attack switches eval mode and ``requires_grad``, which the
  compiled graphs guard on). On CUDA it is a candidate of the measurement for long runs only
  (:data:`spat.utils.calibration.COMPILE_MIN_RUN_S`). ``on`` forces it.

``spat train`` times a short calibration of the real training step in each candidate and takes
the fastest (:mod:`spat.utils.calibration`; the choice is cached per machine and model). Without
a measurement (``--deterministic``, a library call of :func:`resolve_fast_path`, ``spat eval``)
``auto`` follows the static rule of :func:`resolve_fast_path`: bf16 on CUDA and on a CPU with
native bf16, NHWC on CPU and CUDA, compile off. :func:`machine_info` is the record of the
machine that ``env.json`` keeps beside the decision.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

#: Values of the three switches (config, command line).
SWITCH_VALUES = ("auto", "on", "off")
#: /proc/cpuinfo flags that mean native bf16 arithmetic on x86.
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
#: The /proc/cpuinfo flags recorded in ``env.json``: the vector and matrix units that decide how
#: fast fp32 and bf16 convolutions run (oneDNN picks its kernels from them).
RECORDED_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile",
                  "amx_bf16", "amx_int8")


def normalize_switch(value: object, name: str) -> str:
    """``"auto"``/``"on"``/``"off"`` from a config value; booleans and ``None`` (``auto``) of
    older ``config.json`` files are accepted. Anything else raises ``ValueError``."""
    if value is None:
        return "auto"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, str) and value.strip().lower() in SWITCH_VALUES:
        return value.strip().lower()
    raise ValueError(f"invalid {name} {value!r} (valid: {', '.join(SWITCH_VALUES)})")


def _cpuinfo_flags(path: Path = Path("/proc/cpuinfo")) -> set[str] | None:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return None


def cpu_model(path: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name: ``model name`` of ``/proc/cpuinfo`` (Linux x86), else ``Model``
    or ``Hardware`` there (ARM), else :func:`platform.processor`, else the machine type."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    for key in ("model name", "Model", "Hardware"):
        for line in text.splitlines():
            if line.split(":", 1)[0].strip() == key and ":" in line:
                value = line.split(":", 1)[1].strip()
                if value:
                    return value
    return platform.processor() or platform.machine() or "unknown"


def machine_info(device: torch.device) -> dict[str, Any]:
    """The machine as ``env.json`` records it: CPU model, logical cores (all, and those this
    process may use), the CPU flags the fast-path decision reads (:data:`RECORDED_FLAGS`,
    ``None`` where ``/proc/cpuinfo`` is not readable), torch's CPU capability and thread count,
    and the GPU's name and compute capability when ``device`` is CUDA."""
    from spat.utils.threads import available_cores

    flags = _cpuinfo_flags()
    try:
        capability = str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # pragma: no cover - very old torch
        capability = None
    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cpu_arch": platform.machine(),
        "cpu_cores_logical": os.cpu_count(),
        "cpu_cores_usable": available_cores(),
        "cpu_flags": None if flags is None else {f: f in flags for f in RECORDED_FLAGS},
        "cpu_native_bf16": cpu_bf16_support()[0],
        "torch_cpu_capability": capability,
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
    return info


@functools.lru_cache(maxsize=1)
def cpu_bf16_support() -> tuple[bool, str]:
    """Whether this CPU computes bf16 natively, and why we think so (one line).

    x86: the ``avx512_bf16`` or ``amx_bf16`` flag in ``/proc/cpuinfo`` (Linux), else torch's
    ``torch.backends.cpu.get_cpu_capability()`` reporting ``AMX``/``AVX512_BF16``-class support.
    Other architectures (ARM, Apple): ``False`` — we have not measured a gain there, and fp32 is
    the safe default.
    """
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64", "i686", "x86"):
        return False, f"{machine or 'unknown'} CPU: native bf16 not established, using fp32"
    flags = _cpuinfo_flags()
    if flags is not None:
        found = [f for f in BF16_FLAGS if f in flags]
        if found:
            return True, f"CPU has native bf16 ({', '.join(found)} in /proc/cpuinfo)"
        return False, ("CPU lacks native bf16 (no avx512_bf16/amx_bf16 in /proc/cpuinfo); "
                       "emulated bf16 is slower than fp32")
    try:
        cap = str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # pragma: no cover - very old torch
        cap = "unknown"
    if "AMX" in cap.upper() or "BF16" in cap.upper():
        return True, f"CPU has native bf16 (torch CPU capability {cap})"
    return False, f"native bf16 not detected (torch CPU capability {cap}); using fp32"


@dataclass(frozen=True)
class FastPath:
    """The resolved settings of a training run and, per setting, why."""

    amp: bool
    channels_last: bool
    compile: bool
    requested: dict[str, str] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    #: the measurement behind an ``auto`` choice (:mod:`spat.utils.calibration`), if any
    calibration: dict[str, Any] | None = None

    @property
    def amp_dtype(self) -> torch.dtype | None:
        """bf16 when autocast is on, else ``None``."""
        return torch.bfloat16 if self.amp else None

    def to_dict(self) -> dict[str, Any]:
        """The record written to ``env.json``."""
        return {
            "amp": "bf16" if self.amp else "off",
            "channels_last": self.channels_last,
            "compile": self.compile,
            "requested": dict(self.requested),
            "reasons": dict(self.reasons),
            **({"calibration": self.calibration} if self.calibration is not None else {}),
        }


def resolve_fast_path(amp: object, channels_last: object, compile_: object,
                      device: torch.device) -> FastPath:
    """Resolve the ``auto``/``on``/``off`` switches for ``device`` (see the module docstring).

    ``on`` is honoured even where ``auto`` would say off (bf16 on a CPU without native bf16 is
    correct, only slower); the reason then says so.
    """
    req = {"amp": normalize_switch(amp, "amp"),
           "channels_last": normalize_switch(channels_last, "channels_last"),
           "compile": normalize_switch(compile_, "compile")}
    reasons: dict[str, str] = {}
    kind = device.type

    if req["amp"] != "auto":
        use_amp = req["amp"] == "on"
        reasons["amp"] = f"--amp {req['amp']}"
        if use_amp and kind == "cpu" and not cpu_bf16_support()[0]:
            reasons["amp"] += f" (note: {cpu_bf16_support()[1]})"
    elif kind == "cuda":
        use_amp, reasons["amp"] = True, "auto: bf16 autocast on CUDA"
    elif kind == "cpu":
        use_amp, why = cpu_bf16_support()
        reasons["amp"] = f"auto: {why}"
    else:
        use_amp, reasons["amp"] = False, f"auto: fp32 on {kind}"

    if req["channels_last"] != "auto":
        use_cl = req["channels_last"] == "on"
        reasons["channels_last"] = f"--channels-last {req['channels_last']}"
    elif kind in ("cuda", "cpu"):
        use_cl, reasons["channels_last"] = True, f"auto: NHWC convolutions are faster on {kind}"
    else:
        use_cl, reasons["channels_last"] = False, f"auto: not measured on {kind}"

    if req["compile"] != "auto":
        use_compile = req["compile"] == "on"
        reasons["compile"] = f"--compile {req['compile']}"
    else:
        use_compile = False
        reasons["compile"] = ("auto: off (the compiled step was slower than eager in this "
                              "project's CPU benchmark; --compile on to force)")
    return FastPath(amp=use_amp, channels_last=use_cl, compile=use_compile,
                    requested=req, reasons=reasons)


def recorded_fast_path(record: object, amp: object, channels_last: object, compile_: object,
                       device: torch.device) -> FastPath | None:
    """The fast path a run recorded in its ``env.json`` (``record``: its ``fast_path`` object),
    applied to the switches still ``auto``; switches
    given explicitly (``on``/``off``) win. ``None`` when the record is missing or malformed, so
    the caller decides afresh. A resumed run uses this: its ``auto`` choice is not measured
    again, so every session of a run trains the same way."""
    if not isinstance(record, dict):
        return None
    amp_rec, cl_rec, comp_rec = (record.get("amp"), record.get("channels_last"),
                                 record.get("compile"))
    if amp_rec not in ("bf16", "off") or not isinstance(cl_rec, bool) \
            or not isinstance(comp_rec, bool):
        return None
    static = resolve_fast_path(amp, channels_last, compile_, device)
    recorded = {"amp": amp_rec == "bf16", "channels_last": cl_rec, "compile": comp_rec}
    old = record.get("reasons") if isinstance(record.get("reasons"), dict) else {}
    values = {"amp": static.amp, "channels_last": static.channels_last,
              "compile": static.compile}
    reasons = dict(static.reasons)
    for k in values:
        if static.requested[k] == "auto":
            values[k] = recorded[k]
            reasons[k] = (f"auto: as recorded when the run started ({old.get(k, 'no reason')})"
                          if isinstance(old.get(k), str) else "auto: as recorded when the run "
                          "started")
    return FastPath(amp=values["amp"], channels_last=values["channels_last"],
                    compile=values["compile"], requested=static.requested, reasons=reasons)
