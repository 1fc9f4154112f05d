"""The training fast path chosen by measurement, and the per-machine cache of that choice.

A CPU flag does not say which setting is fastest: on an Intel Xeon with AVX512-BF16 but no AMX,
a bf16 matrix product ran at half the fp32 rate and the bf16 training step was slower,
while on this project's AMD EPYC the bf16 step is 1.3–1.7× faster. So ``spat train`` times a
few real training steps in every candidate setting (:func:`candidates`: fp32/bf16 × NCHW/NHWC,
compile on CUDA for long runs) and keeps the fastest (:func:`choose`). :func:`calibrate` is that
timing, with a budget: at most :data:`MIN_BUDGET_S` seconds or :data:`BUDGET_FRACTION` of the
estimated run, whichever is larger. It first times one step of the first candidate at the run's
K; when the full plan (a warm-up step per candidate, then :data:`REPEATS` rounds in alternating
order, the best step of each kept) would exceed the budget it runs one round, then one round
with the attack cut to :data:`REDUCED_K` steps (same shapes, same kernels; the ranking of the
settings is what counts), and otherwise gives up (the caller falls back to the static rule and
says so).

The measured times are cached in ``fast_path.json`` in the user's cache folder
(:func:`cache_dir`), keyed by CPU model, torch version, device, threads, model, input shape,
batch and method (:func:`cache_key`); a later run with the same key takes its choice from there
without measuring. A corrupted cache file is ignored with a note and rewritten; every write is
atomic.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spat.validation import loads_json

#: Environment variable naming the cache folder (tests and shared machines point it elsewhere).
CACHE_ENV = "SPAT_CACHE_DIR"
CACHE_FILE = "fast_path.json"
CACHE_FORMAT = 1
#: The calibration may always spend this many seconds...
MIN_BUDGET_S = 3.0
#: ...or this fraction of the estimated run (steps × the first measured step), if larger.
BUDGET_FRACTION = 0.03
#: Timed rounds over the candidates (each candidate's best step is kept).
REPEATS = 2
#: The attack steps (K) of a calibration cut short to fit its budget.
REDUCED_K = 1
#: ``torch.compile`` is measured (CUDA, ``--compile auto``) only for runs estimated to take at
#: least this long: its compilation (tens of seconds) must be a small part of the run.
COMPILE_MIN_RUN_S = 1800.0

Log = Callable[[str], None]


@dataclass(frozen=True)
class Setting:
    """One candidate of the fast path."""

    amp: bool
    channels_last: bool
    compile: bool = False

    @property
    def name(self) -> str:
        """``fp32``, ``bf16``, ``channels_last``, ``bf16+channels_last`` (+ ``+compile``): the
        names of ``benchmarks/bench.py``'s settings."""
        parts = [p for p, on in (("bf16", self.amp), ("channels_last", self.channels_last),
                                 ("compile", self.compile)) if on]
        return "+".join(parts) if parts else "fp32"

    @classmethod
    def from_name(cls, name: str) -> Setting:
        """The setting whose :attr:`name` is ``name`` (``"compile"``, ``"bf16+compile"``, …)."""
        parts = set(name.split("+")) - {"fp32"}
        unknown = parts - {"bf16", "channels_last", "compile"}
        if unknown:
            raise ValueError(f"not a fast-path setting name: {name!r}")
        return cls("bf16" in parts, "channels_last" in parts, "compile" in parts)


def candidates(requested: Mapping[str, str], device_type: str, *, native_bf16: bool
               ) -> list[Setting]:
    """The settings to measure for the switches ``requested`` (``auto``/``on``/``off`` each)
    on a ``device_type`` device, eager only (compile is added by :func:`calibrate`). The first
    is the static rule's choice (:func:`spat.utils.hardware.resolve_fast_path`)."""
    def options(key: str, auto: list[bool]) -> list[bool]:
        req = requested[key]
        return auto if req == "auto" else [req == "on"]

    fast = device_type in ("cpu", "cuda")
    amps = options("amp", ([True, False] if device_type == "cuda" or native_bf16 else [False])
                   if fast else [False])
    cls = options("channels_last", [True, False] if fast else [False])
    compiles = options("compile", [False])
    return [Setting(a, c, k) for a in amps for c in cls for k in compiles]


def choose(times: Mapping[str, float], *, run_steps: int = 0,
           first: Mapping[str, float] | None = None) -> str:
    """The name of the fastest setting in ``times`` (seconds per step). A compiled setting is
    charged its compilation too: the excess of its first step over its timed step, against
    ``run_steps`` steps of the run. Ties go to the first name."""
    if not times:
        raise ValueError("no timings to choose from")
    first = first or {}

    def cost(name: str) -> float:
        extra = max(0.0, first.get(name, 0.0) - times[name]) if name.endswith("compile") else 0.0
        return times[name] * max(run_steps, 1) + extra

    return min(times, key=cost)


@dataclass
class Calibration:
    """What :func:`calibrate` measured."""

    times: dict[str, float]  #: best step time per setting (seconds), at ``k`` attack steps
    first: dict[str, float]  #: each setting's warm-up step (seconds)
    k: int  #: attack steps per training step while calibrating
    repeats: int  #: timed rounds
    steps_run: int  #: training steps run in all (warm-ups included)
    seconds: float  #: wall time of the calibration
    budget_s: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"times_s": {k: round(v, 6) for k, v in self.times.items()},
                "first_step_s": {k: round(v, 6) for k, v in self.first.items()},
                "k": self.k, "repeats": self.repeats, "steps_run": self.steps_run,
                "seconds": round(self.seconds, 3), "budget_s": round(self.budget_s, 3),
                **({"notes": self.notes} if self.notes else {})}


def calibrate(make_step: Callable[[Setting, int], Callable[[], None]],
              settings: Sequence[Setting], *, k: int, run_steps: int,
              compile_candidate: bool = False,
              clock: Callable[[], float] = time.perf_counter,
              min_budget: float = MIN_BUDGET_S, fraction: float = BUDGET_FRACTION,
              repeats: int = REPEATS) -> Calibration | None:
    """Time the training step of every setting (see the module docstring).

    ``make_step(setting, k)`` returns a function that runs one training step in ``setting``
    with ``k`` attack steps and returns when it is finished (synchronized on a GPU).
    ``run_steps``: the training steps of the run (its cost estimate). ``compile_candidate``:
    also time the fastest eager setting compiled, when the run is long enough
    (:data:`COMPILE_MIN_RUN_S`). Returns ``None`` when even the shortest calibration would
    exceed its budget.
    """
    if not settings:
        raise ValueError("no settings to calibrate")
    start = clock()
    count = 0

    def run(step: Callable[[], None]) -> float:
        nonlocal count
        t0 = clock()
        step()
        count += 1
        return clock() - t0

    names = [s.name for s in settings]
    by_name = dict(zip(names, settings, strict=True))
    steps = {names[0]: make_step(settings[0], k)}
    first = {names[0]: run(steps[names[0]])}
    probe = run(steps[names[0]])
    budget = max(min_budget, fraction * probe * max(run_steps, 1))
    notes: list[str] = []
    n = len(settings)
    left = budget - (clock() - start)
    k_cal, reps = k, repeats
    if (n - 1 + repeats * n) * probe > left:
        reps = 1
        if (2 * n - 1) * probe > left:
            if k <= REDUCED_K:
                return None
            # one attack step of K plus the outer step: the step shrinks about (K'+1)/(K+1)
            est = probe * (REDUCED_K + 1) / (k + 1)
            if 2 * n * est > left:
                return None
            k_cal = REDUCED_K
            notes.append(f"K cut from {k} to {k_cal} to fit the budget of {budget:.1f} s")
            steps, first = {}, {}
    for s, name in zip(settings, names, strict=True):
        if name not in steps:
            steps[name] = make_step(s, k_cal)
            first[name] = run(steps[name])
    times: dict[str, float] = {}
    for r in range(reps):
        for name in (names if r % 2 == 0 else names[::-1]):
            t = run(steps[name])
            times[name] = min(times.get(name, t), t)
    if compile_candidate:
        best = choose(times)
        est_run = times[best] * (k + 1) / (k_cal + 1) * run_steps
        if est_run >= COMPILE_MIN_RUN_S:
            s = by_name[best]
            comp = Setting(s.amp, s.channels_last, True)
            step = make_step(comp, k_cal)
            first[comp.name] = run(step)
            times[comp.name] = min(run(step) for _ in range(reps))
        else:
            notes.append(f"compile not measured: the run is estimated at {est_run:.0f} s, "
                         f"under {COMPILE_MIN_RUN_S:.0f} s")
    return Calibration(times=times, first=first, k=k_cal, repeats=reps, steps_run=count,
                       seconds=clock() - start, budget_s=budget, notes=notes)


# ------------------------------------------------------------------------------ the cache


def cache_dir() -> Path:
    """``$SPAT_CACHE_DIR``, else ``$XDG_CACHE_HOME/spat``, else ``~/.cache/spat``."""
    env = os.environ.get(CACHE_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "spat"


def cache_key(parts: Mapping[str, Any]) -> str:
    """The cache key of ``parts`` (what the timing depends on), as canonical JSON."""
    return json.dumps(dict(parts), sort_keys=True, separators=(",", ":"), default=str)


def _read(path: Path, log: Log) -> dict[str, Any]:
    """The cache's entries; a missing file is empty, an unreadable or corrupted one too (with a
    note)."""
    if not path.is_file():
        return {}
    try:
        doc = loads_json(path.read_text(encoding="utf-8"))
        if not isinstance(doc, dict) or doc.get("format") != CACHE_FORMAT \
                or not isinstance(doc.get("entries"), dict):
            raise ValueError("not a fast-path cache of format 1")
        return doc["entries"]
    except (OSError, UnicodeDecodeError, ValueError) as e:
        log(f"note: ignoring the fast-path cache {path} ({type(e).__name__}: "
            f"{str(e)[:120]}); the step is measured again")
        return {}


def _valid_entry(entry: object) -> bool:
    if not isinstance(entry, dict) or not isinstance(entry.get("times_s"), dict):
        return False
    return all(isinstance(v, int | float) and not isinstance(v, bool) and v > 0
               for v in entry["times_s"].values())


def lookup(key: str, names: Sequence[str], log: Log,
           path: Path | None = None) -> dict[str, Any] | None:
    """The cached calibration of ``key`` if it timed every setting in ``names``, else None."""
    path = path or cache_dir() / CACHE_FILE
    entry = _read(path, log).get(key)
    if not _valid_entry(entry) or not all(n in entry["times_s"] for n in names):
        return None
    return entry


def store(key: str, record: Mapping[str, Any], log: Log, path: Path | None = None) -> bool:
    """Add ``record`` under ``key`` to the cache (an atomic rewrite of the file). A cache that
    cannot be written is a note, never an error. Returns whether it was written."""
    from spat.utils.io import atomic_write_text

    path = path or cache_dir() / CACHE_FILE
    entries = {k: v for k, v in _read(path, lambda _: None).items() if _valid_entry(v)}
    entries[key] = dict(record)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"format": CACHE_FORMAT, "entries": entries},
                                           indent=1, sort_keys=True))
    except OSError as e:
        log(f"note: could not write the fast-path cache {path} ({e.strerror or e}); the next "
            f"run measures again")
        return False
    return True
