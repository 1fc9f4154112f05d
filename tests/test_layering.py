"""The package's layering, as ``docs/architecture.md`` writes it (this test reads the table
there): no module imports a module of a higher layer, no two modules import each other
(directly or through others), and no two first-level units (``spat.train``, ``spat.config``,
...) do, counting imports inside functions too. ``if TYPE_CHECKING:`` imports are not counted
(they never run). A module that no rule places fails the test, so a new package has to be given
its layer there.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
ARCHITECTURE = ROOT / "docs" / "architecture.md"


def read_layers(text: str) -> list[tuple[str, tuple[str, ...]]]:
    """``(layer name, module prefixes)`` from the first table of the architecture document
    whose header starts ``| layer | modules |``, lowest layer first; ``*.command`` names the CLI
    layer's subcommand modules and is not a prefix."""
    layers: list[tuple[str, tuple[str, ...]]] = []
    in_table = False
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not in_table:
            in_table = line.startswith("|") and cells[:2] == ["layer", "modules"]
            continue
        if not line.startswith("|"):
            break
        if set(cells[0]) <= {"-", ":", " "}:
            continue
        names = tuple(n for n in re.findall(r"`([^`]+)`", cells[1]) if not n.startswith("*"))
        layers.append((cells[0], names))
    if not layers:
        raise ValueError("no '| layer | modules |' table found")
    return layers


LAYERS: list[tuple[str, tuple[str, ...]]] = read_layers(ARCHITECTURE.read_text(encoding="utf-8"))
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
        raise ValueError(f"module {module} has no layer: give it a row in {ARCHITECTURE}")
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


def unit_of(module: str) -> str:
    """The first-level unit of ``module``: ``spat.train.loop`` -> ``spat.train``, ``spat.config``
    -> itself, the package ``spat`` -> itself."""
    return ".".join(module.split(".")[:2])


def unit_graph(graph: dict[str, list[tuple[str, int]]]) -> dict[str, list[tuple[str, int]]]:
    """The import graph between first-level units: an edge wherever a module of one imports a
    module of another (an import inside a function included)."""
    out: dict[str, list[tuple[str, int]]] = {unit_of(m): [] for m in graph}
    for m, deps in graph.items():
        out[unit_of(m)] += [(unit_of(d), line) for d, line in deps
                            if unit_of(d) != unit_of(m) and unit_of(d) in out]
    return out


def test_no_cycles_between_first_level_units() -> None:
    """The folders follow the layers: no package or first-level module imports another that
    imports it back, even when no two modules do."""
    units = unit_graph(import_graph(SRC))
    found = cycles(units)
    assert not found, "\n".join(_cycle_text(units, c) for c in found)


def test_the_layer_table_is_read_from_the_architecture_document() -> None:
    names = [name for name, _ in LAYERS]
    assert names[0] == "base" and names[-1] == "cli" and len(names) == len(set(names))
    assert read_layers("| layer | modules | x |\n| --- | --- | --- |\n"
                       "| low | `spat.a`, `spat.b` | y |\n| top | `spat.c`, `*.command` | z |\n"
                       ) == [("low", ("spat.a", "spat.b")), ("top", ("spat.c",))]
    with pytest.raises(ValueError, match="no '| layer"):
        read_layers("# nothing here\n")


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


def test_a_cycle_between_folders_is_reported(tmp_path: Path) -> None:
    root = _fake_package(tmp_path, {
        "__init__.py": "",
        "train/__init__.py": "",
        "train/config.py": "",
        "train/loop.py": "from spat.evaluation import split\n",
        "evaluation/__init__.py": "",
        "evaluation/split.py": "def f():\n    from spat.train import config\n",
    })
    graph = import_graph(root)
    assert cycles(graph) == []  # no two modules import each other ...
    assert cycles(unit_graph(graph)) == [["spat.evaluation", "spat.train"]]  # ... two folders do


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
    assert layer_of("spat.config") < layer_of("spat.evaluation.evaluate_run") < layer_of(
        "spat.train.loop") < layer_of("spat.study.cell") < layer_of("spat") < layer_of(
        "spat.evaluation.command") == layer_of("spat.cli")
    with pytest.raises(ValueError, match="no layer"):
        layer_of("spat.newthing")
