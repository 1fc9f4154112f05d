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


def _partial() -> set[str]:
    """Studies whose row in the README's state table says ``partial`` (a study extended with
    more seeds, reported with the cells finished so far): only their finished cells must be
    committed, and a test elsewhere keeps the issue open until they are complete."""
    if not README.is_file():
        return set()
    row = re.compile(r"^\|[^|]*\|\s*\[([A-Za-z0-9_.+-]+)\.toml\]\([^)]*\)\s*\|\s*partial\b")
    return {m.group(1) for line in README.read_text(encoding="utf-8").splitlines()
            if (m := row.match(line))}


def test_readme_reports_only_committed_studies(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    reported = _reported()
    partial = _partial()
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
            if name in partial and (got is None or not got["done"]):
                continue  # not run yet; the README's state row says "partial"
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


#: A verdict word in prose, written beside its claim: ``**word** (`study: claim`)``.
VERDICT_REF = re.compile(r"\*\*([^*]+)\*\*\s+\(`([A-Za-z0-9_.+-]+): ([a-z0-9_]+)`")
#: Words that make a bold phrase a verdict (it must then carry its claim).
VERDICT_WORD = re.compile(r"\b(holds?|inconclusive|equivalent|established|helps|hurts)\b",
                          re.IGNORECASE)
TOP_README = REPO / "README.md"


def _verdict_prose() -> list[tuple[str, str]]:
    """(file, text) of the prose that carries verdicts: docs/study/README.md without its table
    lines, and the top-level README's "Does SPAT work?" section."""
    out = []
    text = README.read_text(encoding="utf-8")
    out.append(("docs/study/README.md",
                "\n".join(ln for ln in text.splitlines() if not ln.startswith("|"))))
    top = TOP_README.read_text(encoding="utf-8")
    start = top.index("## Does SPAT work?")
    end = top.index("\n## ", start + 1)
    out.append(("README.md", top[start:end]))
    return out


def _claim_verdicts() -> dict[tuple[str, str], str]:
    out = {}
    for res in (STUDY_DIR / "results").glob("*/study.json"):
        doc = json.loads(res.read_text(encoding="utf-8"))
        for c in doc.get("claims", []):
            out[(doc["study"], c["name"])] = c["verdict"]
    return out


def test_every_verdict_word_is_its_claims_verdict() -> None:
    """Each ``**word** (`study: claim`)`` in the docs equals the verdict that the tool wrote
    into that study's claims table; a hand edit of a word fails here."""
    verdicts = _claim_verdicts()
    seen = 0
    for name, text in _verdict_prose():
        for m in VERDICT_REF.finditer(text):
            word, study, claim = " ".join(m.group(1).split()), m.group(2), m.group(3)
            assert (study, claim) in verdicts, f"{name}: no claim {claim!r} in study {study!r}"
            assert word == verdicts[(study, claim)], (
                f"{name}: {study}: {claim} says **{word}**, its claims table says "
                f"**{verdicts[(study, claim)]}**")
            seen += 1
    assert seen >= 20, "the verdict sections cite their claims"


def test_no_verdict_word_without_its_claim() -> None:
    """A bold verdict phrase ("holds", "inconclusive", ...) that names no claim is a hand-written
    verdict: refused."""
    for name, text in _verdict_prose():
        cited = {m.start() for m in VERDICT_REF.finditer(text)}
        for m in re.finditer(r"\*\*([^*]+)\*\*", text):
            if VERDICT_WORD.search(m.group(1)) and m.start() not in cited:
                raise AssertionError(f"{name}: bold verdict **{m.group(1)}** names no claim "
                                     "(write it as **word** (`study: claim`))")


def test_claims_tables_are_the_tools_output(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each committed study's claims are those of its study file, judged again from the
    committed per-seed values by :func:`spat.study.claims.evaluate_claims`."""
    from spat.study.claims import evaluate_claims

    monkeypatch.chdir(REPO)
    for path in TOMLS:
        spec = load_study(path.relative_to(REPO))
        res = STUDY_DIR / "results" / spec.name / "study.json"
        if not spec.claims or not res.is_file():
            continue
        doc = json.loads(res.read_text(encoding="utf-8"))
        values = {(a["dataset"], a["variant"]): {
            m: [float("nan") if x is None else x for x in v["values"]]
            for m, v in a["metrics"].items()} for a in doc["aggregates"]}
        unfinished = {(a["dataset"], a["variant"]) for a in doc["aggregates"]
                      if a["cells_done"] < a["cells_total"]}
        got = [r.to_dict() for r in evaluate_claims(spec.claims, values, unfinished)]
        assert got == doc["claims"], f"{spec.name}: rerun spat study {path.name}"
