"""Training stability of each tuning cell, from its committed metrics.jsonl (no training).

For every run of a study's results folder: the largest epoch-to-epoch drop of the training
accuracy on the training adversary's examples and of the validation PGD-10 accuracy while the
learning rate is at its initial value (before the first decay), and the number of such epochs
with a drop of more than 10 points. A stable run improves almost monotonically; a run whose
accuracy falls by 20-30 points from one epoch to the next is oscillating (issue 11: MART at the
digits' lr 0.05).

Usage (from the repository root):
    python3 docs/study/training_stability.py docs/study/results/digits_tuning [VARIANT_PREFIX]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def stability(run: Path) -> dict[str, float]:
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x]
    recs = {r["epoch"]: r for r in recs}  # a resumed epoch: its last record
    eps = sorted(recs)
    lr0 = recs[eps[0]]["lr"]
    flat = [recs[e] for e in eps if recs[e]["lr"] == lr0]
    out: dict[str, float] = {"epochs_at_lr0": len(flat)}
    for key in ("train_adv_acc", "val_robust_acc"):
        drops = [a[key] - b[key] for a, b in zip(flat, flat[1:], strict=False)
                 if a.get(key) is not None and b.get(key) is not None]
        out[f"max_drop_{key}"] = max([0.0, *drops])
        out[f"drops_over_10pt_{key}"] = sum(1 for d in drops if d > 0.10)
    return out


def main(argv: list[str]) -> None:
    root = Path(argv[1])
    prefix = argv[2] if len(argv) > 2 else ""
    print("| run | epochs at lr0 | max drop train adv. acc | epochs with a >10-pt drop (train "
          "adv.) | max drop val PGD-10 | epochs with a >10-pt drop (val PGD-10) |")
    print("|---|---|---|---|---|---|")
    for run in sorted(root.glob(f"*/{prefix}*/seed*")):
        if not (run / "metrics.jsonl").is_file():
            continue
        s = stability(run)
        print(f"| {run.parent.name}/{run.name} | {s['epochs_at_lr0']} "
              f"| {100 * s['max_drop_train_adv_acc']:.1f} "
              f"| {s['drops_over_10pt_train_adv_acc']} "
              f"| {100 * s['max_drop_val_robust_acc']:.1f} "
              f"| {s['drops_over_10pt_val_robust_acc']} |")


if __name__ == "__main__":
    main(sys.argv)
