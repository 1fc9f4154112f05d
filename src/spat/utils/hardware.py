"""What the processor can do fast, and the training fast path chosen from it.

Three settings decide how a training step runs; each is ``"auto"`` by default and resolved per
device when the run starts, with the reason recorded in the run's ``env.json`` (``fast_path``):

* ``amp`` — bf16 autocast for the training adversary and the outer step. On CUDA: on. On a CPU:
  on only where the CPU executes bf16 natively (x86 AVX512-BF16 or AMX-BF16; there oneDNN runs
  bf16 convolutions and matrix products at about twice the fp32 rate), fp32 elsewhere (emulated
  bf16 is slower than fp32). Losses, the attack objectives and the cosine head are computed in
  float32 under autocast, and evaluation attacks (validation, final test, ``spat eval``) never
  run under autocast.
* ``channels_last`` — NHWC memory format for the model and its inputs. On: CUDA and CPU (oneDNN's
  convolutions are NHWC-native; measured 1.4–1.5× faster for ``small_cnn`` and resnet18 in fp32 on
  one core, see ``benchmarks/RESULTS.md``). Off elsewhere (MPS). ``spat eval`` of a run
  resolves the run's switch again for its own device and puts the model in NHWC too, in fp32
  (:func:`spat.evaluation.run.evaluate_run`).
* ``compile`` — ``torch.compile`` of the training model. ``auto`` is off: on this project's CPU
  benchmark the compiled SPAT step (inductor) was slower than the eager one even after 13–265 s
  of compilation (the attack switches eval mode and ``requires_grad``, which the compiled graphs
  guard on); ``on`` forces it.
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

#: Values of the three switches (config, command line).
SWITCH_VALUES = ("auto", "on", "off")
#: /proc/cpuinfo flags that mean native bf16 arithmetic on x86.
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


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
