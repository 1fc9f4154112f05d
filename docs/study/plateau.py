"""How long each run of a study sat on SPAT's self-paced plateau, from its committed files (no
training).

The plateau (docs/spat-differences.md): in SPAT's first epochs the self-paced CE keeps the
network near chance. For every run of a study's results folder this prints the first epoch whose
mean training accuracy on clean images (``train_clean_acc`` in metrics.jsonl) reaches a level
(default 50 %), and the SGD steps before that epoch (epochs before it × ceil(train / batch),
from data.json and config.json), with the training accuracy of the first five epochs.

Usage (from the repository root):
    python3 docs/study/plateau.py docs/study/results/digits_budget [VARIANT_PREFIX] [LEVEL]
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path


def plateau(run: Path, level: float = 0.5) -> dict[str, object]:
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x]
    by_epoch = {r["epoch"]: r for r in recs}  # a resumed epoch: its last record
    epochs = sorted(by_epoch)
    n_train = json.loads((run / "data.json").read_text())["train"]
    batch = json.loads((run / "config.json").read_text())["batch_size"]
    steps_per_epoch = math.ceil(n_train / batch)
    first = next((e for e in epochs if by_epoch[e]["train_clean_acc"] >= level), None)
    return {"first_epoch": first,
            "steps_before": None if first is None else (first - 1) * steps_per_epoch,
            "first_five": [round(100 * by_epoch[e]["train_clean_acc"]) for e in epochs[:5]]}


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    root = Path(argv[0])
    prefix = argv[1] if len(argv) > 1 else ""
    level = float(argv[2]) if len(argv) > 2 else 0.5
    print(f"run | first epoch with train_clean_acc >= {level:.0%} | SGD steps before it | "
          "train_clean_acc of epochs 1-5 (%)")
    for metrics in sorted(root.glob("*/*/seed*/metrics.jsonl")):
        run = metrics.parent
        if not run.parent.name.startswith(prefix):
            continue
        p = plateau(run, level)
        print(f"{run.parent.name}/{run.name} | {p['first_epoch']} | {p['steps_before']} | "
              f"{p['first_five']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
