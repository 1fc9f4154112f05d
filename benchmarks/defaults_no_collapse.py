"""Each method at its defaults on the digits, as a new user runs it: does any collapse?

``spat train --method M --seed S`` with no other setting (so the per-(dataset, method) defaults
of :data:`spat.config.METHOD_DATASET_DEFAULTS` apply: the lr the study selected on the
validation split) for M in PGD-AT, TRADES, MART, SPAT and S in 0, 1, 2; each run in its own
``spat`` process (the real command line), one thread. Recorded per run: the resolved lr, the
final test clean and PGD-20 accuracy from ``summary.json`` and what the collapse guard reported
(``summary.json``'s ``guard``). Writes the ``defaults-no-collapse`` section of RESULTS.md (with
the command, date, commit and CPU) and ``--json``.

    OMP_NUM_THREADS=1 PYTHONPATH=src python3 benchmarks/defaults_no_collapse.py   # ~25 min
    ... --methods mart --seeds 0          # a part (the section then shows only that part)
    ... --append                          # add to the runs already in --json (chunks)

Not a test: it trains 12 full default runs. ``tests/test_collapse_guard.py`` tests the guard.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import cpu_model, git_commit, load_average, write_section  # noqa: E402
from spat.build import read_summary  # noqa: E402

METHODS = ("pgd_at", "trades", "mart", "spat")
SECTION = "defaults-no-collapse"


def run_one(method: str, seed: int, work: Path) -> dict[str, Any]:
    """``spat train --method method --seed seed`` in a subprocess; its summary and config."""
    name = f"{method}_s{seed}"
    shutil.rmtree(work / name, ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "spat", "train", "--method", method, "--seed", str(seed),
           "--out-dir", str(work), "--name", name, "--no-progress", "--threads", "1"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - t0
    run = work / name
    rec: dict[str, Any] = {"method": method, "seed": seed, "exit": proc.returncode,
                           "wall_s": round(wall, 1)}
    warnings = [ln for ln in (proc.stdout + proc.stderr).splitlines()
                if ln.startswith("warning: epoch")]
    rec["guard_lines"] = warnings
    if proc.returncode != 0:
        rec["error"] = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return rec
    summary = read_summary(run)
    cfg = json.loads((run / "config.json").read_text())
    rec.update(lr=cfg["lr"], beta=cfg["beta"], beta_ramp_epochs=cfg["beta_ramp_epochs"],
               epochs=cfg["epochs"], clean=summary.test_clean_acc,
               pgd20=summary.test_robust_acc, best_epoch=summary.best_epoch,
               guard=list(summary.guard))
    return rec


def render(runs: list[dict[str, Any]], env: dict[str, str], command: str) -> str:
    lines = ["## Defaults on the digits: every method, 3 seeds, no flags (issue 23)", "",
             f"`{command}` — each run is `spat train --method M --seed S` (nothing else: the "
             f"per-(dataset, method) defaults apply), one thread each, one after another. "
             f"Date {env['date']}, commit `{env['commit']}`, CPU {env['cpu']}, load average "
             f"at start {env['load']}. Test accuracy on all 500 test digits at the "
             f"best-by-validation checkpoint; 'guard': what the collapse guard reported "
             f"(`summary.json`, `guard`). Before issue 23 every method used the digits' lr "
             f"0.05, and `spat train --method mart` (seed 0) ended at 82.6 % clean and 67.8 % "
             f"PGD-20 (issue 23; docs/study table 0: MART collapses at that lr).", "",
             "| method | lr (β, ramp) | seed | clean % | PGD-20 % | best epoch | guard | wall s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        if "error" in r:
            lines.append(f"| {r['method']} | – | {r['seed']} | – | – | – | exit {r['exit']}: "
                         f"{r['error']} | {r['wall_s']} |")
            continue
        guard = "; ".join(f"{g['kind']} at epoch {g['epoch']}" for g in r["guard"]) or "none"
        lines.append(f"| {r['method']} | {r['lr']:g} ({r['beta']:g}, {r['beta_ramp_epochs']}) "
                     f"| {r['seed']} | {100 * r['clean']:.1f} | {100 * r['pgd20']:.1f} | "
                     f"{r['best_epoch']} | {guard} | {r['wall_s']} |")
    by: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        if "error" not in r:
            by.setdefault(r["method"], []).append(r)
    lines += ["", "| method | seeds | clean % mean [min, max] | PGD-20 % mean [min, max] | "
              "runs flagged |", "|---|---|---|---|---|"]
    for m, rs in by.items():
        c = [100 * r["clean"] for r in rs]
        p = [100 * r["pgd20"] for r in rs]
        flagged = sum(1 for r in rs if r["guard"])
        lines.append(f"| {m} | {len(rs)} | {sum(c) / len(c):.1f} [{min(c):.1f}, {max(c):.1f}] "
                     f"| {sum(p) / len(p):.1f} [{min(p):.1f}, {max(p):.1f}] | {flagged} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--work", default="/tmp/spat_defaults_bench", help="run folders (replaced)")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "defaults_no_collapse.json"))
    ap.add_argument("--append", action="store_true",
                    help="keep the runs already in --json (run the grid in chunks)")
    ap.add_argument("--no-write", dest="write", action="store_false",
                    help="do not touch RESULTS.md")
    ap.add_argument("--report-only", action="store_true",
                    help="train nothing: write RESULTS.md from the runs in --json")
    args = ap.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.json)
    runs: list[dict[str, Any]] = []
    if args.append and out.is_file():
        runs = json.loads(out.read_text())["runs"]
    env = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "commit": git_commit(),
           "cpu": cpu_model(), "load": load_average()}
    if args.report_only:
        data = json.loads(out.read_text())
        runs, env = data["runs"], data["env"]
    for m in [] if args.report_only else args.methods.split(","):
        for s in (int(x) for x in args.seeds.split(",")):
            rec = run_one(m, s, work)
            runs = [r for r in runs if (r["method"], r["seed"]) != (m, s)] + [rec]
            print(json.dumps({k: v for k, v in rec.items() if k != "guard_lines"}), flush=True)
            out.write_text(json.dumps({"env": env, "runs": runs}, indent=1) + "\n")
    runs.sort(key=lambda r: (METHODS.index(r["method"]) if r["method"] in METHODS else 99,
                             r["seed"]))
    command = "OMP_NUM_THREADS=1 PYTHONPATH=src python3 benchmarks/defaults_no_collapse.py"
    if args.write:
        write_section(SECTION, render(runs, env, command))
    return 1 if any("error" in r or r.get("guard") for r in runs) else 0


if __name__ == "__main__":
    raise SystemExit(main())
