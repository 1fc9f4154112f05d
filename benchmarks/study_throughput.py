"""Study throughput: the same small grid of runs three ways, on this machine.

1. ``pool``: ``spat study`` with its local pool, W workers × T threads (default 2 × 1);
2. ``sequential``: the same cells one after another as ``spat train`` + ``spat eval``
   processes with torch's old default thread count (every process uses all cores);
3. ``concurrent``: the same cells two at a time, each process with the old default threads
   (the oversubscription issue 10 reports: several runs started at once on a laptop);
4. ``concurrent_auto`` (not run by default): two at a time with spat's own default thread count
   (no ``--threads``: free cores from the affinity mask and the load average), what a user who
   starts two runs by hand now gets.

Reported: wall seconds, cells per hour and training images per second (epochs × training
examples of every cell, over the wall time), and the pool's speed-up. Each way writes its own
folder under ``--work`` (deleted first), so the three ways train and evaluate the same cells.

    PYTHONPATH=src:. python benchmarks/study_throughput.py            # ~5-10 min on 2 cores
    PYTHONPATH=src:. python benchmarks/study_throughput.py --quick    # ~1-2 min, a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

STUDY = """
[study]
name = "bench"
out_dir = "{out}"
datasets = ["digits"]
seeds = {seeds}
baseline = "pgd_at"
[train]
epochs = {epochs}
train_subset = {subset}
deterministic = true
device = "cpu"
[variants.pgd_at]
method = "pgd_at"
[variants.trades]
method = "trades"
[eval]
attacks = ["fgsm", "pgd20"]
n_examples = {n_eval}
analyze = false
"""


def _env(threads: int | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def old_default_threads() -> int:
    """torch's own default thread count in a fresh process with no OMP_NUM_THREADS."""
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                         env=_env(None), capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def _cell_commands(cell: Any, threads: int | None) -> list[list[str]]:
    cfg = cell.config
    flag = [] if threads is None else ["--threads", str(threads)]
    train = [sys.executable, "-m", "spat", "train", "--no-progress", *flag,
             "--dataset", cfg["dataset"], "--method", cfg["method"], "--seed", str(cfg["seed"]),
             "--epochs", str(cfg["epochs"]), "--train-subset", str(cfg["train_subset"]),
             "--deterministic", "--device", "cpu", "--out-dir", cfg["out_dir"],
             "--name", cfg["name"]]
    ev = cell.eval
    evaluate = [sys.executable, "-m", "spat", "eval", cell.run_dir, "--no-progress",
                *flag, "--attacks", ",".join(ev["attacks"]),
                "--n-examples", str(ev["n_examples"]), "--sanity-examples", "0",
                "--device", "cpu"]
    return [train, evaluate]


def _run_cell_processes(cell: Any, threads: int | None) -> None:
    for cmd in _cell_commands(cell, threads):
        subprocess.run(cmd, env=_env(None), check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)


def _train_images(cells: list[Any]) -> int:
    total = 0
    for c in cells:
        data = json.loads((Path(c.run_dir) / "data.json").read_text())
        total += int(data["train"]) * int(c.config["epochs"])
    return total


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    from spat.study.spec import load_study, plan_cells

    work = Path(args.work)
    results = []
    old = old_default_threads()
    for way in args.ways:
        root = work / way
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        path = root / "bench.toml"
        path.write_text(STUDY.format(out=root.as_posix(), seeds=list(range(args.seeds)),
                                     epochs=args.epochs, subset=args.train_subset,
                                     n_eval=args.n_eval))
        cells = plan_cells(load_study(path))
        t0 = time.perf_counter()
        if way == "pool":
            cmd = [sys.executable, "-m", "spat", "study", str(path), "--workers",
                   str(args.workers), "--threads", str(args.threads), "--no-figures",
                   "--no-progress"]
            subprocess.run(cmd, env=_env(None), check=True, stdout=subprocess.DEVNULL)
            how = f"{args.workers} workers × {args.threads} threads"
        elif way == "sequential":
            for c in cells:
                _run_cell_processes(c, old)
            how = f"one after another, {old} threads each (torch's default)"
        elif way == "concurrent":
            with ThreadPoolExecutor(2) as ex:
                list(ex.map(lambda c: _run_cell_processes(c, old), cells))
            how = f"2 at a time, {old} threads each (torch's default)"
        elif way == "concurrent_auto":
            with ThreadPoolExecutor(2) as ex:
                list(ex.map(lambda c: _run_cell_processes(c, None), cells))
            how = "2 at a time, spat's default threads (no --threads)"
        else:
            raise SystemExit(f"unknown way {way!r}")
        wall = time.perf_counter() - t0
        images = _train_images(cells)
        results.append({"way": way, "how": how, "cells": len(cells), "wall_s": wall,
                        "cells_per_hour": 3600 * len(cells) / wall,
                        "train_images_per_s": images / wall, "train_images": images})
        print(f"{way:<11} {how:<48} {wall:7.1f} s  {results[-1]['cells_per_hour']:7.1f} "
              f"cells/h  {results[-1]['train_images_per_s']:8.1f} train images/s", flush=True)
    pool = next((r for r in results if r["way"] == "pool"), None)
    if pool:
        for r in results:
            if r is not pool:
                print(f"pool vs {r['way']}: {r['wall_s'] / pool['wall_s']:.2f}× the throughput")
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=2, help="seeds per variant (2 variants)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--train-subset", dest="train_subset", type=int, default=1000)
    p.add_argument("--n-eval", dest="n_eval", type=int, default=200)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--ways", default="pool,sequential,concurrent",
                   help="comma-separated, from pool, sequential, concurrent, concurrent_auto")
    p.add_argument("--work", default="/tmp/spat-study-bench", help="scratch folder")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--quick", action="store_true", help="1 epoch, 300 examples, 100 evaluated")
    args = p.parse_args(argv)
    args.ways = [w.strip() for w in args.ways.split(",") if w.strip()]
    if args.quick:
        args.epochs, args.train_subset, args.n_eval = 1, 300, 100
    print(f"study throughput on {os.cpu_count()} CPUs (load average "
          f"{os.getloadavg()[0]:.1f}): 2 variants × {args.seeds} seeds, digits, "
          f"{args.epochs} epochs of {args.train_subset} examples, eval FGSM + PGD-20 on "
          f"{args.n_eval}")
    results = measure(args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
