"""Plugins: third-party methods and attacks, loaded once per process.

A plugin is a Python module that registers what it defines when imported — a training method
(:func:`spat.methods.register_method`; its hyperparameters are its dataclass fields, so they
become ``spat train`` flags and config/study keys at once) and/or an attack
(:func:`spat.evaluation.register_attack`). Three ways name one:

* the environment variable :data:`ENV_VAR` (``SPAT_PLUGINS``): comma-separated importable module
  names or paths of ``.py`` files; read by the command line at start and by every study worker
  (spawned pool workers and submitit jobs inherit the environment);
* the entry-point group :data:`ENTRY_POINT_GROUP` (``spat.plugins``) of installed packages: an
  entry point names a module (imported) or a callable (imported, then called with no
  arguments);
* a study file's ``[study] plugins = [...]`` (paths relative to the study file, or module
  names), loaded when the file is read and again by the process that runs each cell.

Each plugin is imported once per process (:func:`load_plugin` remembers it); one that fails to
import is a one-line :class:`~spat.errors.SpatError` naming it.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

from spat.errors import SpatError
from spat.validation import one_line

#: The environment variable naming plugins: module names or .py paths, comma-separated.
ENV_VAR = "SPAT_PLUGINS"
#: The entry-point group of installed plugins.
ENTRY_POINT_GROUP = "spat.plugins"

#: What this process loaded: plugin (module name, absolute .py path or ``entry point NAME``)
#: → the module or the entry point's object.
_LOADED: dict[str, Any] = {}


def _is_path(spec: str) -> bool:
    return spec.endswith(".py") or "/" in spec or os.sep in spec


def resolve_plugin(spec: str, base: str | os.PathLike[str] | None = None) -> str:
    """``spec`` as :func:`load_plugin` takes it: a ``.py`` path made absolute (relative to
    ``base`` when given, else to the current directory), a module name as it is."""
    spec = spec.strip()
    if not _is_path(spec):
        return spec
    p = Path(spec).expanduser()
    if not p.is_absolute() and base is not None:
        p = Path(base) / p
    return str(p.resolve())


def _import_file(path: Path) -> ModuleType:
    name = f"spat_plugin_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look their module up here
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def load_plugin(spec: str) -> Any:
    """Import the plugin ``spec`` (a module name or a ``.py`` path) once in this process;
    returns its module. A missing file or a failing import is a one-line :class:`SpatError`
    naming the plugin."""
    spec = resolve_plugin(spec)
    if spec in _LOADED:
        return _LOADED[spec]
    try:
        if _is_path(spec):
            path = Path(spec)
            if not path.is_file():
                raise SpatError(f"plugin {spec}: no such file")
            module = _import_file(path)
        else:
            module = importlib.import_module(spec)
    except SpatError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever the plugin raises, one line naming it
        raise SpatError(f"plugin {spec!r} failed to import: {type(e).__name__}: "
                        f"{one_line(e, 200)}") from None
    _LOADED[spec] = module
    return module


def load_plugins(specs: Iterable[str]) -> None:
    """:func:`load_plugin` for each of ``specs``, in order."""
    for spec in specs:
        load_plugin(spec)


def environment_plugins() -> list[str]:
    """The plugins that :data:`ENV_VAR` names (empty entries skipped)."""
    return [s.strip() for s in os.environ.get(ENV_VAR, "").split(",") if s.strip()]


def load_installed_plugins() -> None:
    """Load the plugins of :data:`ENV_VAR` and of the :data:`ENTRY_POINT_GROUP` entry points
    (each once): what the command line and every study worker call at start."""
    load_plugins(environment_plugins())
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        key = f"entry point {ep.name}"
        if key in _LOADED:
            continue
        try:
            obj = ep.load()
            if callable(obj) and not isinstance(obj, ModuleType):
                obj()
        except Exception as e:  # noqa: BLE001 - one line naming the plugin
            raise SpatError(f"plugin {ep.name!r} ({ENTRY_POINT_GROUP} entry point {ep.value}) "
                            f"failed to load: {type(e).__name__}: {one_line(e, 200)}") from None
        _LOADED[key] = obj
