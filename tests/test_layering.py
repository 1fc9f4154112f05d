"""The package's layering: no module imports a module of a higher layer, and no two modules
import each other (directly or through others), counting imports inside functions too.

Layers, lowest first (a module may import its own layer and those below):

0. base — ``spat._version``, ``spat.errors``, ``spat.validation``, ``spat.utils``
1. data / models / attacks — and ``spat.checkpoint`` (files of weights, no training)
2. methods
3. config — ``spat.train.config`` (the description of a run, which evaluation and analysis
   read too) and ``spat.runs`` (data, model and method from a config; a run loaded back)
4. evaluation
5. train
6. analysis / study / export (may use train and evaluation)
7. api — ``spat.api`` and the package ``spat`` itself (the facade)
8. cli — ``spat.cli``, ``spat.__main__`` and every subcommand module ``*.command``

``if TYPE_CHECKING:`` imports are not counted (they never run). A module that no rule places
fails the test, so a new package has to be given its layer here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("spat._version", "spat.errors", "spat.validation", "spat.utils")),
    ("data/models/attacks", ("spat.data", "spat.models", "spat.attacks", "spat.checkpoint")),
    ("methods", ("spat.methods",)),
    ("config", ("spat.train.config", "spat.runs")),
    ("evaluation", ("spat.evaluation",)),
    ("train", ("spat.train",)),
    ("analysis/study/export", ("spat.analysis", "spat.study", "spat.export")),
    ("api", ("spat.api", "spat")),
    ("cli", ("spat.cli", "spat.__main__")),
]
CLI = len(LAYERS) - 1


def layer_of(module: str) -> int:
    """Index in :data:`LAYERS` of ``module``: the longest matching prefix (``spat`` matches
    only the package itself); ``*.command`` modules (subcommands) are the CLI's.
    ``ValueError`` for a module no rule places."""
    if module.endswith(".command"):
        return CLI
    best, best_len = -1, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            sub = p != "spat" and module.startswith(p + ".")  # the root package: itself only
            if (module == p or sub) and len(p) > best_len:
                best, best_len = i, len(p)
    if best < 0:
        raise ValueError(f"module {module} has no layer: add it to LAYERS in {__file__}")
    return best


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_lines(tree: ast.AST) -> set[int]:
    """Line numbers of the bodies of ``if TYPE_CHECKING:`` blocks."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            t = node.test
            name = t.id if isinstance(t, ast.Name) else t.attr if isinstance(t, ast.Attribute) \
                else None
            if name == "TYPE_CHECKING":
                for stmt in node.body:
                    lines.update(range(stmt.lineno, (stmt.end_lineno or stmt.lineno) + 1))
    return lines


def imports_of(source: str, module: str, is_package: bool, known: set[str]
               ) -> list[tuple[str, int]]:
    """``(imported spat module, line)`` for every import in ``source`` (at any depth). ``from
    pkg import name`` counts as an import of ``pkg.name`` when that is a module of ``known``,
    else of ``pkg``."""
    tree = ast.parse(source)
    skip = _type_checking_lines(tree)
    package = module if is_package else module.rpartition(".")[0]
    out: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names
                    if a.name == "spat" or a.name.startswith("spat.")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target != "spat" and not target.startswith("spat."):
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                out.append((sub if sub in known else target, node.lineno))
    return out


def import_graph(root: Path) -> dict[str, list[tuple[str, int]]]:
    """Each module under ``root/spat`` with the spat modules it imports."""
    files = {module_name(p, root): p for p in sorted((root / "spat").rglob("*.py"))}
    known = set(files)
    return {m: imports_of(p.read_text(encoding="utf-8"), m, p.name == "__init__.py", known)
            for m, p in files.items()}


def upward_imports(graph: dict[str, list[tuple[str, int]]]) -> list[str]:
    """One line per import of a higher layer: ``a (layer) imports b (layer) at line n``."""
    bad = []
    for m, deps in graph.items():
        for d, line in deps:
            if layer_of(d) > layer_of(m):
                bad.append(f"{m} ({LAYERS[layer_of(m)][0]}) imports {d} "
                           f"({LAYERS[layer_of(d)][0]}) at line {line}")
    return bad


def cycles(graph: dict[str, list[tuple[str, int]]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted.
    A package's ``__init__`` importing its own submodules counts like any module; a module
    importing its own package (whose ``__init__`` imports it back) is a cycle."""
    edges = {m: sorted({d for d, _ in deps if d in graph and d != m})
             for m, deps in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def _cycle_text(graph: dict[str, list[tuple[str, int]]], comp: list[str]) -> str:
    inside = set(comp)
    links = sorted({f"{m} -> {d} (line {line})" for m in comp for d, line in graph[m]
                    if d in inside and d != m})
    return "cycle: " + "; ".join(links)


def test_every_module_has_a_layer() -> None:
    graph = import_graph(SRC)
    assert "spat.cli" in graph and "spat.train.loop" in graph  # the walk found the package
    for m in graph:
        layer_of(m)


def test_no_module_imports_a_higher_layer() -> None:
    bad = upward_imports(import_graph(SRC))
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_no_import_cycles() -> None:
    graph = import_graph(SRC)
    found = cycles(graph)
    assert not found, "\n".join(_cycle_text(graph, c) for c in found)


# ---------------------------------------------------------------- the checks can fail


def _fake_package(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = tmp_path / "spat" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
    return tmp_path


def test_an_upward_import_inside_a_function_is_reported(tmp_path: Path) -> None:
    root = _fake_package(tmp_path, {
        "__init__.py": "",
        "utils/__init__.py": "",
        "utils/io.py": "def f():\n    import os\n\n    from spat.train.loop import Trainer\n",
        "train/__init__.py": "",
        "train/loop.py": "from spat.utils import io\n",
    })
    bad = upward_imports(import_graph(root))
    assert bad == ["spat.utils.io (base) imports spat.train.loop (train) at line 4"]


def test_relative_and_type_checking_imports(tmp_path: Path) -> None:
    root = _fake_package(tmp_path, {
        "__init__.py": "",
        "data/__init__.py": "",
        "data/types.py": ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                          "    from spat.evaluation import core\n"),
        "data/files.py": "from ..evaluation import core\n",
        "evaluation/__init__.py": "",
        "evaluation/core.py": "",
    })
    bad = upward_imports(import_graph(root))
    assert bad == ["spat.data.files (data/models/attacks) imports spat.evaluation.core "
                   "(evaluation) at line 1"]


def test_a_cycle_within_one_layer_is_reported(tmp_path: Path) -> None:
    root = _fake_package(tmp_path, {
        "__init__.py": "",
        "train/__init__.py": "",
        "train/loop.py": "def g():\n    from spat.train.run import train\n",
        "train/run.py": "from spat.train import loop\n",
        "train/optim.py": "from spat.train import loop\n",
    })
    graph = import_graph(root)
    assert upward_imports(graph) == []
    assert cycles(graph) == [["spat.train.loop", "spat.train.run"]]
    assert _cycle_text(graph, ["spat.train.loop", "spat.train.run"]) == (
        "cycle: spat.train.loop -> spat.train.run (line 2); "
        "spat.train.run -> spat.train.loop (line 1)")


def test_layer_rules() -> None:
    assert layer_of("spat.train.config") < layer_of("spat.evaluation.run") < layer_of(
        "spat.train.loop") < layer_of("spat.study.cell") < layer_of("spat") < layer_of(
        "spat.evaluation.command") == layer_of("spat.cli")
    with pytest.raises(ValueError, match="no layer"):
        layer_of("spat.newthing")
