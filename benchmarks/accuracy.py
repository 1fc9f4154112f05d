"""Speed must not cost accuracy: train SPAT with our fast path (``spat.train.run.train``, the real
loop) and with the official-style fp32 reference loop (``benchmarks/reference.py``) from the same
seeds, data subset and initial weights, then evaluate both with the same evaluator (clean and
PGD-20 test accuracy, ``spat.train.validate.evaluate_split``).

    PYTHONPATH=src:. python benchmarks/accuracy.py --data-dir ../shared/data

Writes a section of ``benchmarks/RESULTS.md`` (``--no-write`` to skip).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [p for p in (str(ROOT / "src"), str(ROOT)) if p not in sys.path]

import torch  # noqa: E402

from benchmarks import common as C  # noqa: E402
from benchmarks import reference as R  # noqa: E402
from spat.build import load_data, model_for  # noqa: E402
from spat.config import TrainConfig  # noqa: E402
from spat.data import Split  # noqa: E402
from spat.train.run import train  # noqa: E402
from spat.train.validate import evaluate_split  # noqa: E402
from spat.utils.rng import final_test_seed, seed_everything  # noqa: E402


def config(args: argparse.Namespace, seed: int, out_dir: str) -> TrainConfig:
    return TrainConfig(
        dataset="fashion_mnist", data_dir=args.data_dir, val_size=0,
        train_subset=args.train_subset, model="small_cnn", head="cosine", method="spat",
        eps=args.eps, step_size=args.step_size, steps=args.steps, epochs=args.epochs,
        batch_size=args.batch, lr=args.lr, weight_decay=args.weight_decay, schedule="constant",
        test_steps=20, test_subset=args.test_subset, seed=seed, device="cpu", amp=False,
        out_dir=out_dir, name=f"ours_seed{seed}",
    ).resolved()


def test_split(cfg: TrainConfig, data: Any) -> Split:
    """The test subset ``spat.train.run.train`` evaluates (fixed permutation, seed 0)."""
    test = data.test
    if cfg.test_subset is not None and cfg.test_subset < len(test):
        idx = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))
        idx = idx[: cfg.test_subset]
        test = Split(images=test.images[idx], labels=test.labels[idx])
    return test


def run_ours(cfg: TrainConfig) -> dict[str, Any]:
    t0 = time.perf_counter()
    summary = train(cfg, progress=False, log=lambda _: None)
    seconds = time.perf_counter() - t0
    last = summary["last_epoch"] or {}
    return {"clean": summary["test_clean_acc"], "robust": summary["test_robust_acc"],
            "train_seconds": summary["train_seconds_this_session"], "total_seconds": seconds,
            "final_train_loss": last.get("train_loss")}


def run_reference(cfg: TrainConfig) -> dict[str, Any]:
    """Same seeding, data subset and initial weights as ``spat.train.run.train``; then the
    official ``train()`` loop (DataLoader, per-batch ``.to``, ``spat_loss``, plain SGD)."""
    assert cfg.epochs is not None and cfg.batch_size is not None and cfg.lr is not None
    assert cfg.eps is not None and cfg.step_size is not None and cfg.steps is not None
    device = torch.device("cpu")
    seed_everything(cfg.seed)
    data = load_data(cfg)
    model = model_for(cfg, data.info)  # initialised exactly as our run's model
    ref, scale = R.reference_model(model)
    assert scale is not None
    loader = R.make_loader(data.train.images, data.train.labels, batch_size=cfg.batch_size,
                           device=device, shuffle=True, augment=data.info.augment,
                           drop_last=len(data.train) > cfg.batch_size)
    optimizer = R.make_optimizer(ref, cfg.lr, cfg.momentum, cfg.weight_decay or 0.0)

    losses: list[torch.Tensor] = []

    def loss_fn(m, x, y, opt):
        loss = R.spat_loss(m, x, y, opt, step_size=cfg.step_size, epsilon=cfg.eps,
                           perturb_steps=cfg.steps, beta=cfg.beta or 6.0, m=cfg.m, n=cfg.n,
                           s=scale, num_classes=data.info.num_classes)
        losses.append(loss.detach())  # for the last epoch's mean loss (no host read here)
        return loss

    t0 = time.perf_counter()
    for _ in range(cfg.epochs):
        losses.clear()
        R.train_epoch(ref, device, loader, optimizer, loss_fn)
    seconds = time.perf_counter() - t0
    evaluated = R.load_into_ours(ref, model)
    preds = evaluate_split(evaluated, test_split(cfg, data), cfg, device, cfg.test_steps,
                           seed=final_test_seed(cfg.seed))
    return {"clean": preds.accuracy(None), "robust": preds.accuracy(next(iter(
        preds.adversarial))), "train_seconds": seconds,
            "final_train_loss": float(torch.stack(losses).mean())}


def mean_spread(values: list[float]) -> str:
    m = statistics.fmean(values)
    if len(values) < 2:
        return f"{100 * m:.1f}"
    return f"{100 * m:.1f} ± {100 * (max(values) - min(values)) / 2:.1f}"


def report(args: argparse.Namespace, env: dict[str, Any], runs: list[dict[str, Any]]) -> str:
    lines = [f"## Accuracy: ours (fast path) vs reference (official-style fp32), SPAT on "
             f"Fashion-MNIST ({args.train_subset} training images)", ""]
    lines += C.environment_lines(env) + [""]
    lines += [f"small_cnn + cosine head (s = 8), SPAT (β 6, m 0.2, n 0.2), training adversary "
              f"ε {args.eps}, η {args.step_size}, K = {args.steps}; SGD lr {args.lr} (constant), "
              f"momentum 0.9, weight decay {args.weight_decay}, batch {args.batch}, "
              f"{args.epochs} epochs; same seed → same data subset, same initial weights. Both "
              f"trained models are evaluated by the same evaluator (ours: `evaluate_split`, clean "
              f"and PGD-20 at ε {args.eps}, η ε/4, on the same {args.test_subset} test images). "
              "Ours = `spat.train.run.train` (the real loop, CPU: fp32 eager). Reference = "
              "`benchmarks/reference.py` (official SPAT loss, in-place-normalising cosine head, "
              "DataLoader). The two differ by design in the cosine head's weight gradient "
              "(docs/spat-differences.md §1) and in their random streams (data order, noise), so "
              "they are compared as distributions over seeds, not step by step.", "",
              "| seed | ours clean % | ours PGD-20 % | ref clean % | ref PGD-20 % | ours train s "
              "| ref train s | last-epoch mean train loss ours / ref |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in runs:
        o, f = r["ours"], r["reference"]
        lines.append(f"| {r['seed']} | {100 * o['clean']:.1f} | {100 * o['robust']:.1f} | "
                     f"{100 * f['clean']:.1f} | {100 * f['robust']:.1f} | "
                     f"{o['train_seconds']:.0f} | {f['train_seconds']:.0f} | "
                     f"{o['final_train_loss']:.3f} / {f['final_train_loss']:.3f} |")
    o_clean = [r["ours"]["clean"] for r in runs]
    o_rob = [r["ours"]["robust"] for r in runs]
    f_clean = [r["reference"]["clean"] for r in runs]
    f_rob = [r["reference"]["robust"] for r in runs]
    o_t = sum(r["ours"]["train_seconds"] for r in runs)
    f_t = sum(r["reference"]["train_seconds"] for r in runs)
    lines.append(f"| mean ± half-range | {mean_spread(o_clean)} | {mean_spread(o_rob)} | "
                 f"{mean_spread(f_clean)} | {mean_spread(f_rob)} | {o_t:.0f} (total) | "
                 f"{f_t:.0f} (total) | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--train-subset", type=int, default=5000)
    p.add_argument("--test-subset", type=int, default=500)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--step-size", type=float, default=0.025)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--write", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    env = C.environment(torch.device("cpu"))
    env["command"] = "python benchmarks/accuracy.py " + " ".join(sys.argv[1:])
    runs = []
    with tempfile.TemporaryDirectory(prefix="spat_accuracy_") as tmp:
        for seed in (int(s) for s in args.seeds.split(",")):
            ours = run_ours(config(args, seed, tmp))
            print(f"[seed {seed}] ours: {ours}", flush=True)
            ref = run_reference(config(args, seed, tmp))
            print(f"[seed {seed}] reference: {ref}", flush=True)
            runs.append({"seed": seed, "ours": ours, "reference": ref})
    env["load_average_end"] = C.load_average()
    text = report(args, env, runs)
    print("\n" + text)
    if args.json:
        Path(args.json).write_text(json.dumps({"env": env, "args": vars(args), "runs": runs},
                                              indent=1))
    if args.write:
        C.write_section("accuracy fashion_mnist spat", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
