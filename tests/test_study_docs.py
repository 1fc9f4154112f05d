"""docs/study/ (issue 11): every table's study file parses with the study parser, and every
table docs/study/README.md reports comes from a committed study: the study's results hold every
cell the file declares, finished, with its small files, and each table line the README shows is
a line of that study's own study.md. Fast: reads files, trains nothing."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from spat.study.spec import load_study, plan_cells

REPO = Path(__file__).resolve().parents[1]
STUDY_DIR = REPO / "docs" / "study"
README = STUDY_DIR / "README.md"
#: A README section that reports a study's numbers starts with this marker.
MARKER = re.compile(r"<!--\s*study:\s*([A-Za-z0-9_.+-]+)\s*-->")
TOMLS = sorted(STUDY_DIR.glob("*.toml"))

pytestmark = pytest.mark.skipif(not TOMLS, reason="docs/study/ holds no study files")


def _tracked() -> set[str] | None:
    """Files git tracks under docs/study/results (None outside a git checkout): in a checkout,
    "committed" means tracked, not merely present in the working tree."""
    if not (REPO / ".git").exists() or shutil.which("git") is None:
        return None
    out = subprocess.run(["git", "ls-files", "-z", "docs/study/results"], cwd=REPO,
                         capture_output=True, check=False)
    if out.returncode != 0:
        return None
    return {f for f in out.stdout.decode("utf-8", "replace").split("\0") if f}


def _reported() -> dict[str, list[str]]:
    """Study name -> the Markdown table lines of its README section (marker to next marker)."""
    if not README.is_file():
        return {}
    out: dict[str, list[str]] = {}
    current: str | None = None
    for line in README.read_text(encoding="utf-8").splitlines():
        m = MARKER.search(line)
        if m:
            current = m.group(1)
            out.setdefault(current, [])
        elif line.startswith("<!-- end study -->"):
            current = None
        elif current is not None and line.startswith("|"):
            out[current].append(line.rstrip())
    return out


@pytest.mark.parametrize("path", TOMLS, ids=[p.stem for p in TOMLS])
def test_study_file_parses(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)  # out_dir and data_dir are relative to the repository root
    spec = load_study(path.relative_to(REPO))
    assert spec.name == path.stem, "a table's file is named after its study"
    assert Path(spec.out_dir) == Path("docs/study/results")
    assert plan_cells(spec), "a study declares at least one cell"


def test_readme_reports_only_committed_studies(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    reported = _reported()
    tracked = _tracked()
    names = {p.stem for p in TOMLS}
    for name, table_lines in reported.items():
        assert name in names, f"README reports {name!r}, which has no docs/study/{name}.toml"
        spec = load_study(Path("docs/study") / f"{name}.toml")
        res = STUDY_DIR / "results" / name
        doc = json.loads((res / "study.json").read_text(encoding="utf-8"))
        cells = {c["key"]: c for c in doc["cells"]}
        for cell in plan_cells(spec):
            got = cells.get(cell.key)
            assert got is not None and got["done"], f"{name}: cell {cell.key} not in results"
            assert got["metrics"], f"{name}: cell {cell.key} has no numbers"
            run = REPO / cell.run_dir
            for f in ("config.json", "summary.json", "metrics.jsonl", "eval/report.json"):
                assert (run / f).is_file(), f"{name}: {cell.key} lacks {f}"
                if tracked is not None:
                    assert f"{cell.run_dir}/{f}" in tracked, f"{name}: {cell.key}/{f} not committed"
        assert table_lines, f"README's section for {name} shows no table"
        if tracked is not None:
            for f in ("study.json", "study.md"):
                assert f"docs/study/results/{name}/{f}" in tracked, f"{name}/{f} not committed"
        md = set((res / "study.md").read_text(encoding="utf-8").splitlines())
        for line in table_lines:
            assert line in md, f"README line not in {name}/study.md: {line}"


def test_marker_parser() -> None:
    text = "<!-- study: a_b -->"
    assert MARKER.search(text).group(1) == "a_b"  # type: ignore[union-attr]
    assert MARKER.search("<!-- studies -->") is None
