"""Robustness must not drop on the CPU fast path: train the same models with the fast path
(bf16 autocast + channels_last, what ``--amp auto --channels-last auto`` picks on a CPU with
native bf16) and in plain fp32 (``--amp off --channels-last off``), same seeds, same data, same
initial weights, then evaluate every model in fp32 with the project's evaluator (clean, PGD-20,
AutoAttack-fast) on the same test images.

    PYTHONPATH=src:. python benchmarks/accuracy_fastpath.py --data-dir ../shared/data

Writes ``benchmarks/accuracy_fastpath.json`` (per-seed numbers) and a section of
``benchmarks/RESULTS.md`` with mean ± std per setting and the paired difference (fast − fp32)
with its two-sided 95 % paired t interval (``--no-write`` to skip both). The JSON is rewritten
after every model, and ``--from-log LOG`` rebuilds the table from the per-model JSON lines this
script prints (an interrupted run keeps what it finished).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [p for p in (str(ROOT / "src"), str(ROOT)) if p not in sys.path]

import torch  # noqa: E402

from benchmarks import common as C  # noqa: E402
from spat.build import load_data, method_for, model_for  # noqa: E402
from spat.config import TrainConfig  # noqa: E402
from spat.evaluation.protocol import evaluate  # noqa: E402
from spat.train.loop import Trainer  # noqa: E402
from spat.utils.rng import seed_everything  # noqa: E402

#: The two settings compared: (amp, channels_last).
SETTINGS = {"fast": ("on", "on"), "fp32": ("off", "off")}
METRICS = ("clean", "PGD-20", "AutoAttack-fast")
#: Two-sided 97.5 % quantiles of Student's t by degrees of freedom (df > 10: 1.96 is close).
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
        9: 2.262, 10: 2.228}


def config(args: argparse.Namespace, method: str, seed: int, setting: str) -> TrainConfig:
    """The budget of ``tests/test_train_e2e.py``'s Fashion-MNIST comparison (3,000 images,
    4 epochs of batch 32, lr 0.02, K 3, η 0.04, ε 0.1), with the fast path on or off."""
    amp, cl = SETTINGS[setting]
    return TrainConfig(
        dataset="fashion_mnist", data_dir=args.data_dir, val_size=0,
        train_subset=args.train_subset, method=method, steps=args.steps,
        step_size=args.step_size, epochs=args.epochs, batch_size=args.batch, lr=args.lr,
        seed=seed, device="cpu", amp=amp, channels_last=cl, compile="off",
    ).resolved()


def train_and_evaluate(args: argparse.Namespace, method: str, seed: int, setting: str
                       ) -> dict[str, Any]:
    cfg = config(args, method, seed, setting)
    seed_everything(cfg.seed)
    data = load_data(cfg)
    model = model_for(cfg, data.info)  # same seed -> same initial weights in both settings
    trainer = Trainer(cfg, data, model, method_for(cfg), torch.device("cpu"), run_dir=None,
                      progress=False, log=lambda _: None)
    assert trainer.fast_path.amp == (setting == "fast")
    t0 = time.perf_counter()
    history = trainer.fit()
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    # evaluation: fp32 (no autocast anywhere in spat.evaluation), the same test images for all
    report = evaluate(model, data.test, eps=float(cfg.eps or 0.0),
                      attacks=["pgd20", "aa-fast"], n_examples=args.test_images, seed=0,
                      batch_size=args.test_images, sanity_examples=0)
    preds = report.predictions
    acc = {"clean": preds.accuracy(None)}
    acc.update({name: preds.accuracy(name) for name in preds.adversarial})
    return {"method": method, "seed": seed, "setting": setting, **acc,
            "train_seconds": train_s, "eval_seconds": time.perf_counter() - t0,
            "train_images_per_s": statistics.fmean(h["train_images_per_s"] for h in history),
            "final_train_loss": history[-1]["train_loss"]}


def paired(fast: list[float], fp32: list[float]) -> tuple[float, float, float]:
    """Mean of the paired differences (fast − fp32) and its 95 % t interval."""
    d = [a - b for a, b in zip(fast, fp32, strict=True)]
    m = statistics.fmean(d)
    if len(d) < 2:
        return m, math.nan, math.nan
    half = T975.get(len(d) - 1, 1.96) * statistics.stdev(d) / math.sqrt(len(d))
    return m, m - half, m + half


def table(args: argparse.Namespace, env: dict[str, Any], runs: list[dict[str, Any]]) -> str:
    def ms(v: list[float]) -> str:
        sd = statistics.stdev(v) if len(v) > 1 else 0.0
        return f"{100 * statistics.fmean(v):.1f} ± {100 * sd:.1f}"

    lines = [f"## Accuracy: CPU fast path (bf16 autocast + channels_last) vs fp32, Fashion-MNIST "
             f"({args.train_subset} training images)", "", *C.environment_lines(env),
             *([f"- note: {env['note']}"] if env.get("note") else []), "",
             f"small_cnn, training adversary K = {args.steps}, η {args.step_size}, ε 0.1; SGD lr "
             f"{args.lr}, batch {args.batch}, {args.epochs} epochs; same seed → same data, same "
             f"initial weights in both settings. Every model is evaluated in fp32 on the same "
             f"{args.test_images} test images (clean, PGD-20 with η ε/4, AutoAttack-fast = "
             "APGD-CE + APGD-T). mean ± std over seeds; Δ = fast − fp32 per seed, mean and "
             "95 % paired t interval (percentage points).", "",
             "| method | metric | fp32 % | fast % | Δ (pp) | 95 % CI of Δ | seeds |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for method in args.methods.split(","):
        by = {s: sorted((r for r in runs if r["method"] == method and r["setting"] == s),
                        key=lambda r: r["seed"]) for s in SETTINGS}
        if not by["fast"]:
            continue
        for metric in METRICS:
            fast = [r[metric] for r in by["fast"]]
            ref = [r[metric] for r in by["fp32"]]
            m, lo, hi = paired(fast, ref)
            lines.append(f"| {method} | {metric} | {ms(ref)} | {ms(fast)} | {100 * m:+.1f} | "
                         f"[{100 * lo:+.1f}, {100 * hi:+.1f}] | {len(fast)} |")
        speed = [a["train_seconds"] / b["train_seconds"] for a, b in zip(by["fast"], by["fp32"],
                                                                          strict=True)]
        lines.append(f"| {method} | train time fast/fp32 | | | {statistics.median(speed):.2f}× "
                     f"(median) | | {len(speed)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--methods", default="spat", help="spat and/or pgd_at")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--train-subset", type=int, default=3000)
    p.add_argument("--test-images", type=int, default=500)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--step-size", type=float, default=0.04)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "accuracy_fastpath.json"))
    p.add_argument("--write", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--from-log", default=None,
                   help="no training: the table from the per-model JSON lines of earlier runs' "
                        "output (comma-separated logs, e.g. two runs with different --seeds)")
    args = p.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    env = C.environment(torch.device("cpu"))
    env["command"] = "python benchmarks/accuracy_fastpath.py " + " ".join(sys.argv[1:])
    runs: list[dict[str, Any]] = []

    def dump() -> None:
        if args.write:
            Path(args.json).write_text(json.dumps({"env": env, "args": vars(args),
                                                   "runs": runs}, indent=1) + "\n",
                                       encoding="utf-8")

    if args.from_log:
        for log in args.from_log.split(","):
            for line in Path(log).read_text(encoding="utf-8").splitlines():
                if line.startswith("{"):
                    r = json.loads(line)
                    if r["method"] in args.methods.split(","):
                        runs.append(r)
        # keep only seeds finished in both settings (the comparison is paired)
        done = {(r["method"], r["seed"]) for r in runs if r["setting"] == "fp32"}
        runs = [r for r in runs if (r["method"], r["seed"]) in done]
        args.seeds = ",".join(sorted({str(r["seed"]) for r in runs}))
        env["note"] = ("table rebuilt from the per-model lines printed by an earlier run with "
                       "the same settings")
    else:
        for method in args.methods.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                for setting in SETTINGS:
                    r = train_and_evaluate(args, method, seed, setting)
                    print(json.dumps(r), flush=True)
                    runs.append(r)
                    dump()
    env["load_average_end"] = C.load_average()
    text = table(args, env, runs)
    print("\n" + text)
    if args.write:
        dump()
        C.write_section("accuracy fastpath fashion_mnist", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
