"""One validation layer for everything ``spat`` reads from disk.

Every file a command reads — a TOML/JSON config, a checkpoint's ``state.pt`` contents, a pointer
file, a run's ``config.json``/``data.json``/``summary.json``, an eval report — goes through the
small typed checkers here. A failure is a one-line :class:`~spat.errors.SpatError` naming the file
and the field (``<file>: field 'epochs' must be an integer, got 2.5``), which the CLI prints as
``spat: error: ...`` with exit code 2. Nothing here writes a file.

The checks are *data-driven*: a dataclass's field annotations (``int``, ``float | None``,
``str``, ``bool``, ``tuple[str, ...]``) say what each field accepts, so a field added to
:class:`~spat.config.TrainConfig` or :class:`~spat.data.DatasetInfo` is checked without
touching this module. Ranges and cross-field rules stay with their owners (``validate()``).

Rules (stricter than Python's coercions, because a file that says ``epochs = true`` or
``deterministic = "yes"`` was not written by ``spat``): ``bool`` accepts only ``true``/``false``;
``int`` accepts integers (not booleans, not ``2.5``, not ``"3"``) that fit in 64 bits
(:data:`INT_MIN`..:data:`INT_MAX`: JSON and TOML integers are unbounded in Python, and every
integer setting ends up in a torch/NumPy int64 or a loop count); ``float`` accepts finite
integers and floats (``1e400`` reads as infinity and is refused; and, for the fields in
:data:`FRACTION_FIELDS`, a fraction string such as ``"8/255"``, as the command line does);
``str`` accepts strings; ``X | None`` also accepts ``null`` (JSON) — TOML has no null, so there
the key is simply left out. A value's own range (``epochs >= 1``, ``0 <= m < 1``) is its owner's:
:class:`Range` states one with its reason.

The JSON and TOML parsers (:func:`loads_json`, :func:`loads_toml`) bound the nesting of what they
read to :data:`MAX_NESTING` levels and turn Python's integer-digit limit into a decode error.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from spat.errors import SpatError

#: Fields whose value may be written as a fraction string (``"8/255"``): ε and step sizes.
FRACTION_FIELDS = frozenset({"eps", "step_size"})
#: The integers an ``int`` field accepts: those of a signed 64-bit integer (torch's and NumPy's
#: int64, which seeds, counts and sizes become).
INT_MIN, INT_MAX = -(2**63), 2**63 - 1
#: The deepest nesting of lists and objects/tables accepted in a JSON or TOML file: ``spat``'s own
#: files nest at most 6 levels; Python's parsers (and every recursive walk after them) spend one
#: stack frame per level, so a deeper file would end in a ``RecursionError``.
MAX_NESTING = 64


#: Terminal escape sequences (colour, bold: CSI ``ESC [ … m``; titles, links: OSC ``ESC ] … BEL``)
#: and any other control character: a library's message (torch's refusal of a pickle is bold)
#: must not colour or move the user's terminal, nor a log file.
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"
                      r"|[\x00-\x08\x0b\x0e-\x1f\x7f]")


def one_line(text: object, limit: int | None = 200) -> str:
    """``text`` without terminal escape sequences and control characters, with all whitespace
    runs (newlines included) collapsed to single spaces, cut to ``limit`` characters (ending in
    "…"; ``None``: no limit) — for one-line error messages."""
    s = " ".join(_ESCAPES.sub("", str(text)).split())
    return s if limit is None or len(s) <= limit else s[: limit - 1] + "…"


def _show(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**30:
        # repr() of an integer beyond Python's digit limit raises; no one reads 400 digits
        exp = int((abs(value).bit_length() - 1) * math.log10(2))  # |value| >= 2**(bits-1)
        exp += abs(value) >= 10 ** (exp + 1)
        return f"with |value| >= 10**{exp}"
    return one_line(repr(value), 80)


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a table/object", type(None): "null"}.get(
        type(value), type(value).__name__)


def parse_fraction_or_none(text: str) -> float | None:
    """``"8/255"`` → 0.0313…, ``"0.031"`` → 0.031; ``None`` if ``text`` is neither."""
    t = text.strip()
    try:
        if "/" in t:
            a, b = t.split("/", 1)
            return float(a) / float(b)
        return float(t)
    except (ValueError, ZeroDivisionError):
        return None


def check_value(value: Any, annotation: Any, *, where: str, field: str) -> Any:
    """``value`` checked against a type ``annotation``; returns it (a fraction string parsed).

    Supported annotations: ``bool``, ``int``, ``float``, ``str``, unions with ``None``,
    ``tuple[X, ...]``/``list[X]`` (a list of X; returned as a tuple for tuples) and ``Any``.
    Raises a one-line :class:`SpatError` naming ``where`` and ``field``.
    """
    def fail(expected: str) -> SpatError:
        return SpatError(f"{where}: field {field!r} must be {expected}, got {_type_name(value)} "
                         f"{_show(value)}")

    if annotation is Any:
        return value
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None:
            if type(None) in options:
                return None
            raise fail(" or ".join(_describe(a) for a in options))
        inner = [a for a in options if a is not type(None)]
        errors = []
        for a in inner:
            try:
                return check_value(value, a, where=where, field=field)
            except SpatError as e:
                errors.append(e)
        if len(inner) == 1:
            raise errors[0]
        raise fail(" or ".join(_describe(a) for a in options))
    if origin in (tuple, list):
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        if not isinstance(value, list | tuple):
            raise fail(f"a list of {_describe(args[0]) if args else 'values'}")
        items = [check_value(v, args[0], where=where, field=f"{field}[{i}]") if args else v
                 for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if annotation is bool:
        if not isinstance(value, bool):
            raise fail("true or false")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail("an integer")
        if not INT_MIN <= value <= INT_MAX:
            raise fail("an integer that fits in 64 bits (|value| < 2**63)")
        return value
    if annotation is float:
        # ``eps``, or a dotted path ending in it (``train.eps`` in a study file)
        if isinstance(value, str) and field.rsplit(".", 1)[-1] in FRACTION_FIELDS:
            parsed = parse_fraction_or_none(value)
            if parsed is None:
                raise fail("a number or a fraction such as 8/255")
            value = parsed
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise fail("a number")
        try:
            finite = math.isfinite(value)
        except OverflowError:  # an integer beyond the largest float
            finite = False
        if not finite:
            raise fail("a finite number")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise fail("a string")
        return value
    if annotation is list:
        if not isinstance(value, list):
            raise fail("a list")
        return value
    if annotation is dict or origin is dict:
        if not isinstance(value, dict):
            raise fail("a table/object")
        return value
    raise TypeError(f"check_value: unsupported annotation {annotation!r}")  # a bug, not input


def _describe(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin in (tuple, list):
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        return f"a list of {_describe(args[0]) if args else 'values'}"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            type(None): "null"}.get(annotation, getattr(annotation, "__name__", str(annotation)))


def field_types(cls: type) -> dict[str, Any]:
    """The resolved annotation of each field of dataclass ``cls`` (works with postponed
    annotations)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def check_fields(values: Mapping[str, Any], cls: type, *, where: str,
                 required: bool = False, allow_unknown: bool = False) -> dict[str, Any]:
    """``values`` checked field by field against dataclass ``cls``'s annotations.

    Unknown keys are an error (listing the valid ones) unless ``allow_unknown`` (then they are
    dropped); with ``required``, every field without a default must be present. Returns the
    checked values (fraction strings parsed, lists turned into tuples where the field is one).
    """
    if not isinstance(values, Mapping):
        raise SpatError(f"{where}: expected a table/object of settings, got "
                        f"{_type_name(values)}")
    types_ = field_types(cls)
    out: dict[str, Any] = {}
    unknown = sorted(str(k) for k in values if k not in types_)
    if unknown and not allow_unknown:
        raise SpatError(f"{where}: unknown key(s) {', '.join(unknown)} "
                        f"(valid: {', '.join(types_)})")
    for key, value in values.items():
        if key in types_:
            out[key] = check_value(value, types_[key], where=where, field=key)
    if required:
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.name not in out and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if missing:
            raise SpatError(f"{where}: missing field(s) {', '.join(missing)}")
    return out


# ----------------------------------------------------------------------------- ranges
@dataclasses.dataclass(frozen=True)
class Range:
    """The meaningful values of a number, with the reason, declared once by the value's owner
    (e.g. SPAT's margin m: ``Range(0.0, 1.0, high_open=True, reason="...")``).

    ``low``/``high``: the bounds (``math.inf`` for none above); ``low_open``/``high_open``: the
    bound itself excluded. An infinite upper bound is always excluded, so a value in a range with
    no upper bound is finite; NaN is in no range. :meth:`check` raises a one-line
    :class:`SpatError` that names the value, the range and the reason.
    """

    low: float
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    reason: str = ""

    def __contains__(self, value: object) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open or math.isinf(self.high) \
            else value <= self.high
        return bool(above and below)  # False for NaN

    def describe(self) -> str:
        """``"in [0, 1)"``, ``">= 0 and finite"``, ``"> 0 and finite"``."""
        def num(v: float) -> str:
            return f"{v:g}"

        if math.isinf(self.high):
            return f"{'>' if self.low_open else '>='} {num(self.low)} and finite"
        return (f"in {'(' if self.low_open else '['}{num(self.low)}, {num(self.high)}"
                f"{')' if self.high_open else ']'}")

    def check(self, value: Any, name: str) -> Any:
        """``value`` if it lies in the range, else a one-line :class:`SpatError`."""
        if value not in self:
            why = f" ({self.reason})" if self.reason else ""
            raise SpatError(f"{name} must be {self.describe()}{why}, got {_show(value)}")
        return value


# ----------------------------------------------------------------------------- JSON and TOML
def nesting_depth(obj: Any) -> int:
    """How deeply lists/tuples and dicts nest in ``obj`` (a scalar: 0, ``[]``: 1, ``[[1]]``: 2);
    iterative, so any depth is measured without recursion."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            value = list(value.values())
        if isinstance(value, list | tuple):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in value)
    return deepest


def _too_deep(obj: Any) -> bool:
    return nesting_depth(obj) > MAX_NESTING


def loads_json(text: str) -> Any:
    """``json.loads(text)``, with nesting bounded by :data:`MAX_NESTING` and integers by Python's
    digit limit: each violation is a :class:`json.JSONDecodeError` (a ``ValueError``), which
    every caller already treats as a file that is not valid JSON. NaN and Infinity are accepted
    (``spat eval`` writes NaN for an empty class); the typed checks refuse them where a field
    must be finite."""
    too_deep = json.JSONDecodeError(f"nested deeper than {MAX_NESTING} levels", text, 0)
    try:
        data = json.loads(text)
    except RecursionError:
        raise too_deep from None
    except json.JSONDecodeError:
        raise
    except ValueError as e:  # Python's limit on the digits of an integer
        raise json.JSONDecodeError(f"number out of range ({one_line(e, 80)})", text, 0) from None
    if _too_deep(data):
        raise too_deep
    return data


def loads_toml(text: str) -> dict[str, Any]:
    """``tomllib.loads(text)``, with nesting bounded by :data:`MAX_NESTING` and integers by
    Python's digit limit; every problem (a syntax error included) is a ``ValueError`` whose
    message says what is wrong."""
    import tomllib

    try:
        data = tomllib.loads(text)
    except RecursionError:
        raise ValueError(f"nested deeper than {MAX_NESTING} levels") from None
    except tomllib.TOMLDecodeError:
        raise
    except ValueError as e:  # Python's limit on the digits of an integer
        raise ValueError(f"number out of range ({one_line(e, 80)})") from None
    if _too_deep(data):
        raise ValueError(f"nested deeper than {MAX_NESTING} levels")
    return data


def read_json_object(path: str | os.PathLike[str], *, what: str = "file") -> dict[str, Any]:
    """A JSON file that must hold an object; a missing, unreadable or non-object file is a
    one-line :class:`SpatError` naming it."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpatError(f"{what} not found: {p}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpatError(f"{what} {p} is unreadable ({type(e).__name__}: {one_line(e)})") from None
    try:
        data = loads_json(text)
    except ValueError as e:
        raise SpatError(f"{what} {p} is corrupted (not JSON: {one_line(e, 120)})") from None
    if not isinstance(data, dict):
        raise SpatError(f"{what} {p} is corrupted (expected a JSON object, got "
                        f"{_type_name(data)})")
    return data


def require(data: Mapping[str, Any], key: str, annotation: Any, *, where: str,
            check: Callable[[Any], bool] | None = None, expected: str = "") -> Any:
    """``data[key]`` checked against ``annotation`` (and ``check``, described by ``expected``)."""
    if key not in data:
        raise SpatError(f"{where}: missing field {key!r}")
    value = check_value(data[key], annotation, where=where, field=key)
    if check is not None and not check(value):
        raise SpatError(f"{where}: field {key!r} must be {expected}, got {_show(value)}")
    return value


def check_summary(data: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A run's ``summary.json`` (as ``spat train`` writes it): accuracies in [0, 1], counts ≥ 0."""
    out = dict(data)
    for key in ("test_clean_acc", "test_robust_acc"):
        require(data, key, float, where=where, check=lambda v: 0.0 <= v <= 1.0,
                expected="in [0, 1]")
    for key in ("test_examples", "best_epoch", "epochs"):
        require(data, key, int, where=where, check=lambda v: v >= 0, expected=">= 0")
    require(data, "test_attack", str, where=where)
    require(data, "test_eps", float, where=where, check=lambda v: 0.0 <= v <= 1.0,
            expected="in [0, 1]")
    require(data, "run_dir", str, where=where)
    return out


def check_dataset_info(data: Mapping[str, Any], cls: type, where: str) -> Any:
    """A run's ``data.json`` as a ``cls`` (:class:`spat.data.DatasetInfo`): every field present
    and of its annotated type, sizes ≥ 1, at least 2 classes with one name each, one positive
    mean/std per channel. Extra keys (split sizes) are allowed."""
    d = check_fields(data, cls, where=where, required=True, allow_unknown=True)

    def bad(msg: str) -> SpatError:
        return SpatError(f"{where}: {msg}")

    if d["num_classes"] < 2:
        raise bad(f"field 'num_classes' must be >= 2, got {d['num_classes']}")
    for key in ("channels", "height", "width"):
        if d[key] < 1:
            raise bad(f"field {key!r} must be >= 1, got {d[key]}")
    if len(d["class_names"]) != d["num_classes"]:
        raise bad(f"field 'class_names' has {len(d['class_names'])} names for "
                  f"{d['num_classes']} classes")
    for key in ("mean", "std"):
        if len(d[key]) != d["channels"]:
            raise bad(f"field {key!r} has {len(d[key])} values for {d['channels']} channels")
    if any(v <= 0 for v in d["std"]):
        raise bad(f"field 'std' must be > 0, got {list(d['std'])}")
    return cls(**{k: d[k] for k in field_types(cls)})


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def check_metrics_record(rec: Any, where: str) -> dict[str, Any]:
    """One record of a run's ``metrics.jsonl``: an object with an integer ``epoch`` ≥ 1,
    numbers (or null) for the losses and accuracies, and ``val_adv_confusion`` (if present) a
    square matrix of non-negative integer counts."""
    if not isinstance(rec, dict):
        raise SpatError(f"{where}: expected a JSON object, got {_type_name(rec)}")
    require(rec, "epoch", int, where=where, check=lambda v: v >= 1, expected=">= 1")
    for key, value in rec.items():
        if (key.startswith(("train_", "val_")) or key == "lr") and key not in (
                "val_attack", "val_adv_confusion") and value is not None and not _is_number(value):
            raise SpatError(f"{where}: field {key!r} must be a number, got {_type_name(value)} "
                            f"{_show(value)}")
    if rec.get("val_attack") is not None and not isinstance(rec["val_attack"], str):
        raise SpatError(f"{where}: field 'val_attack' must be a string")
    conf = rec.get("val_adv_confusion")
    if conf is not None:
        ok = (isinstance(conf, list) and len(conf) >= 2
              and all(isinstance(row, list) and len(row) == len(conf) for row in conf)
              and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                      for row in conf for v in row))
        if not ok:
            raise SpatError(f"{where}: field 'val_adv_confusion' must be a square matrix (K ≥ 2) "
                            f"of non-negative integer counts")
    return rec


def check_prediction_arrays(arrays: Mapping[str, Any], where: str) -> None:
    """The arrays of a ``predictions.npz`` (``labels``, ``clean``, ``adv/<attack>``): present,
    one-dimensional, integer, non-negative and all of one length."""
    for key in ("labels", "clean"):
        if key not in arrays:
            raise SpatError(f"{where}: missing array {key!r}")
    n = None
    for key, a in arrays.items():
        shape = tuple(getattr(a, "shape", ()))
        kind = getattr(getattr(a, "dtype", None), "kind", "")
        if len(shape) != 1 or kind not in "iu":
            raise SpatError(f"{where}: array {key!r} must be a 1-D integer array, got shape "
                            f"{shape} of kind {kind or type(a).__name__!r}")
        if n is None:
            n = shape[0]
        elif shape[0] != n:
            raise SpatError(f"{where}: array {key!r} has {shape[0]} entries, 'labels' {n}")
        if shape[0] and int(a.min()) < 0:
            raise SpatError(f"{where}: array {key!r} holds a negative class index")


def check_eval_report(report: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A ``spat eval`` ``report.json``: ``eps`` a positive number, accuracies in [0, 1] (or null
    where an attack did not run), ``attacks`` a list of objects with a string ``key``/``name`` and
    an accuracy, ``subset`` an object, counts ≥ 0."""
    def acc(d: Mapping[str, Any], key: str, w: str, *, required: bool = False) -> None:
        if key in d or required:
            require(d, key, float | None, where=w,
                    check=lambda v: v is None or 0.0 <= v <= 1.0, expected="in [0, 1]")

    require(report, "schema", str, where=where)
    require(report, "eps", float, where=where, check=lambda v: v > 0, expected="> 0")
    acc(report, "clean_acc", where, required=True)
    acc(report, "autoattack_acc", where)
    if "n_examples" in report:
        require(report, "n_examples", int, where=where, check=lambda v: v >= 0, expected=">= 0")
    if "subset" in report:
        sub = require(report, "subset", dict, where=where)
        for key in ("n_examples", "of"):
            if key in sub:
                require(sub, key, int | None, where=f"{where}: subset",
                        check=lambda v: v is None or v >= 0, expected=">= 0")
    attacks = require(report, "attacks", list, where=where)
    for i, a in enumerate(attacks):
        w = f"{where}: attacks[{i}]"
        check_value(a, dict, where=w, field="attack")
        for key in ("key", "name", "kind"):
            if key in a:
                require(a, key, str, where=w)
        acc(a, "accuracy", w)
    return dict(report)


# ----------------------------------------------------------------------------- tensors
def check_finite_tensors(tensors: Mapping[str, torch.Tensor], where: str) -> None:
    """Refuse NaN or infinite values in any floating-point tensor, naming the first one."""
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex()):
            if t.numel() and not bool(torch.isfinite(t).all()):
                bad = int((~torch.isfinite(t)).sum())
                raise SpatError(f"{where}: tensor {name!r} holds {bad} non-finite value(s) "
                                f"(NaN or inf) of {t.numel()}; these weights cannot be used "
                                "(resume from an earlier checkpoint or retrain)")


#: The hyperparameters of an SGD parameter group in ``state.pt`` and their types (torch's
#: ``SGD.state_dict``). Resume sets them from the configuration again, but a wrong type is a
#: damaged file, refused before the resume writes anything.
OPTIMIZER_HYPERPARAMETERS: dict[str, Any] = {
    "lr": float, "momentum": float, "dampening": float, "weight_decay": float,
    "nesterov": bool, "maximize": bool, "differentiable": bool, "foreach": bool | None,
    "fused": bool | None}
#: Those every torch version writes (the others: newer versions; torch fills in defaults).
OPTIMIZER_REQUIRED = ("lr", "momentum", "dampening", "weight_decay", "nesterov")


def check_state(state: Mapping[str, Any], where: str, *, for_resume: bool) -> None:
    """A checkpoint's ``state.pt`` contents (see :meth:`spat.train.loop.Trainer.state_dict`).

    For loading a model (eval, analyze, compare) only ``config`` (a table, checked as a
    training config by the caller), ``epoch`` and ``num_classes`` are needed; to resume,
    also the optimizer (its parameter groups' hyperparameters typed), the random-number-generator
    states and the counters.
    """
    if "config" not in state:
        raise SpatError(f"{where}: missing field 'config' (the run's training settings)")
    check_value(state["config"], dict, where=where, field="config")
    if "epoch" in state or for_resume:
        require(state, "epoch", int, where=where, check=lambda v: v >= 0, expected=">= 0")
    if "num_classes" in state:
        require(state, "num_classes", int | None, where=where,
                check=lambda v: v is None or v >= 2, expected=">= 2")
    if not for_resume:
        return
    require(state, "best_epoch", int, where=where, check=lambda v: v >= -1, expected=">= -1")
    v = state.get("best_val_robust_acc")
    if isinstance(v, bool) or not isinstance(v, int | float) or math.isnan(v):
        raise SpatError(f"{where}: field 'best_val_robust_acc' must be a number, got "
                        f"{_type_name(v)} {_show(v)}")
    if "world_size" in state:
        require(state, "world_size", int, where=where, check=lambda v: v >= 1, expected=">= 1")
    opt = require(state, "optimizer", dict, where=where)
    groups = require(opt, "param_groups", list, where=f"{where}: optimizer")
    require(opt, "state", dict, where=f"{where}: optimizer")
    for i, g in enumerate(groups):
        w = f"{where}: optimizer param_groups[{i}]"
        check_value(g, dict, where=w, field="group")
        require(g, "params", list[int], where=w)
        for key, annotation in OPTIMIZER_HYPERPARAMETERS.items():
            if key in g or key in OPTIMIZER_REQUIRED:
                require(g, key, annotation, where=w)
    for pid, entry in opt["state"].items():
        if not isinstance(entry, dict):
            raise SpatError(f"{where}: optimizer state of parameter {pid!r} must be a table, "
                            f"got {_type_name(entry)}")
        check_finite_tensors({f"optimizer state {pid}.{k}": v for k, v in entry.items()}, where)
    rng = require(state, "rng", dict, where=where)
    py = require(rng, "python", dict, where=f"{where}: rng")
    require(py, "version", int, where=f"{where}: rng.python")
    _tensor(py, "internal", f"{where}: rng.python", dtype=torch.int64, numel=625)
    npr = require(rng, "numpy", dict, where=f"{where}: rng")
    require(npr, "kind", str, where=f"{where}: rng.numpy", check=lambda v: v == "MT19937",
            expected="'MT19937'")
    _tensor(npr, "keys", f"{where}: rng.numpy", dtype=torch.int64, numel=624)
    require(npr, "pos", int, where=f"{where}: rng.numpy", check=lambda v: 0 <= v <= 624,
            expected="in [0, 624]")
    require(npr, "has_gauss", int, where=f"{where}: rng.numpy")
    require(npr, "cached_gaussian", float, where=f"{where}: rng.numpy")
    _tensor(rng, "torch", f"{where}: rng", dtype=torch.uint8)


def _tensor(d: Mapping[str, Any], key: str, where: str, *, dtype: torch.dtype,
            numel: int | None = None) -> torch.Tensor:
    if key not in d:
        raise SpatError(f"{where}: missing field {key!r}")
    t = d[key]
    if not isinstance(t, torch.Tensor) or t.dtype != dtype or (numel is not None
                                                              and t.numel() != numel):
        got = (f"a {t.dtype} tensor of {t.numel()} values" if isinstance(t, torch.Tensor)
               else _type_name(t))
        raise SpatError(f"{where}: field {key!r} must be a {dtype} tensor"
                        f"{f' of {numel} values' if numel else ''}, got {got}")
    return t


# ----------------------------------------------------------------------------- paths
def check_output_dir(path: str | os.PathLike[str], option: str) -> Path:
    """Refuse an output folder that is an existing file, or lies under one (one line)."""
    p = Path(path)
    for q in (p, *p.parents):
        if q.exists() or q.is_symlink():
            if not q.is_dir():
                what = "is" if q == p else f"lies under {q}, which is"
                raise SpatError(f"{option} {p} {what} an existing file, not a folder")
            break
    return p


def check_optimizer_fits(optimizer: torch.optim.Optimizer, where: str) -> None:
    """After ``load_state_dict``: every per-parameter buffer has its parameter's shape (torch
    checks only the number of parameters; a wrong shape would fail at the first step)."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            for key, buf in optimizer.state.get(param, {}).items():
                if isinstance(buf, torch.Tensor) and buf.dim() > 0 and buf.shape != param.shape:
                    raise SpatError(f"{where}: optimizer buffer {key!r} has shape "
                                    f"{tuple(buf.shape)} but its parameter has "
                                    f"{tuple(param.shape)} (the state does not fit this model)")
