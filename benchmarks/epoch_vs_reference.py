"""A whole ``spat train --method spat`` epoch against the official-style reference epoch (issue 23:
"at most 0.45× the reference's time at equal threads"), on the same images, in alternated rounds.

    PYTHONPATH=src:. python benchmarks/epoch_vs_reference.py            # ~6 min, 1 thread
    PYTHONPATH=src:. python benchmarks/epoch_vs_reference.py --dry-run  # the commands, nothing run

Each round runs two child processes, one after the other (AB, then BA in the next round):

* **ours**: the real ``python -m spat train --method spat`` command (``--threads 1``, 2 epochs, a
  fresh fast-path cache so its ``auto`` is measured as on a new machine); the 2nd epoch's
  ``train_seconds`` and ``val_seconds`` from ``RUN/metrics.jsonl`` (the first epoch follows the
  calibration and warms up), and the whole command's wall time;
* **reference**: this script with ``--child reference``: the same images (``spat.build.load_data``
  of the same configuration), the same architecture with the official cosine head
  (``reference.reference_model``), ``reference.make_loader`` / ``make_optimizer`` /
  ``train_epoch`` with ``spat_loss`` for 2 epochs, each followed by the official per-epoch
  evaluation ``eval_adv_test`` (PGD-20) on as many images as ours validates; the 2nd epoch timed.

Then, in this process: GFLOP of one training step and of one per-epoch evaluation of each side
(``bench.count_flops``), the achieved GFLOP/s from the measured epoch times, and a bare fp32 and
bf16 matrix product on one thread (``common.matmul_gflops``) as this CPU's attainable rate. See
``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [p for p in (str(ROOT / "src"), str(ROOT)) if p not in sys.path]

import torch  # noqa: E402

from benchmarks import bench as B  # noqa: E402
from benchmarks import common as C  # noqa: E402
from benchmarks import reference as R  # noqa: E402
from spat.config import TrainConfig  # noqa: E402
from spat.data import Split  # noqa: E402

TARGET = 0.45
#: Fields of ours' resolved configuration (RUN/config.json) that the reference must share.
SHARED = ("eps", "step_size", "steps", "beta", "m", "n", "cosine_scale", "batch_size", "lr",
          "momentum", "weight_decay", "model", "head", "val_steps")
FLAGS = {"eps": "--eps", "step_size": "--step-size", "steps": "--steps", "lr": "--lr",
         "weight_decay": "--weight-decay", "batch_size": "--batch-size",
         "val_steps": "--val-steps"}


# ============================================================================== configuration


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The one configuration both sides run: ours passes it as flags, the reference reads its
    values (and loads the same images with ``spat.build.load_data``)."""
    return TrainConfig(dataset=args.dataset, data_dir=args.data_dir, method="spat",
                       train_subset=args.images, val_size=args.val_images, steps=args.steps,
                       eps=args.eps, step_size=args.step_size, lr=args.lr,
                       weight_decay=args.weight_decay, batch_size=args.batch, epochs=2,
                       val_steps=args.val_steps, seed=args.seed, device="cpu").resolved()


def ours_command(args: argparse.Namespace, cfg: TrainConfig, out_dir: str, name: str
                 ) -> list[str]:
    """``python -m spat train --method spat …`` with every value of ``cfg`` that matters."""
    flags = [f"{FLAGS[k]}={getattr(cfg, k)}" for k in FLAGS]
    data = ["--dataset", cfg.dataset] + (["--data-dir", str(cfg.data_dir)]
                                         if cfg.dataset != "digits" else [])
    return [sys.executable, "-m", "spat", "train", "--method", "spat", *data,
            "--train-subset", str(args.images), "--val-size", str(args.val_images), *flags,
            "--epochs", "2", "--test-subset", str(args.test_images), "--test-steps", "1",
            "--seed", str(args.seed), "--device", "cpu", "--threads", str(args.threads),
            "--no-progress", "--out-dir", out_dir, "--name", name, "--overwrite"]


def child_env(args: argparse.Namespace, cache_dir: str | None = None) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads),
           "MKL_NUM_THREADS": str(args.threads),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]
                                         + ([os.environ["PYTHONPATH"]]
                                            if os.environ.get("PYTHONPATH") else []))}
    if cache_dir is not None:
        env["SPAT_CACHE_DIR"] = cache_dir  # a fresh fast-path calibration, as on a new machine
    return env


def reference_command(args: argparse.Namespace) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), *args.argv, "--child", "reference"]


# ============================================================================== the two sides


def run_ours(args: argparse.Namespace, cfg: TrainConfig, tmp: str, name: str
             ) -> dict[str, Any]:
    """One ``spat train`` run in a child process: its 2nd epoch's times, its wall time, the
    fast path its ``auto`` chose, and the shared settings it resolved (to check them)."""
    cache = tempfile.mkdtemp(prefix="cache_", dir=tmp)
    cmd = ours_command(args, cfg, tmp, name)
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=child_env(args, cache),
                         check=False)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"spat train failed ({out.returncode}):\n{out.stderr[-3000:]}")
    run = Path(tmp) / name
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = records[-1]
    fast = json.loads((run / "env.json").read_text())["fast_path"]
    resolved = json.loads((run / "config.json").read_text())
    resolved = resolved.get("config", resolved)
    setting = ("bf16" if fast["amp"] == "bf16" else "fp32") + (
        "+channels_last" if fast["channels_last"] else "")
    return {"train_s": last["train_seconds"], "val_s": last["val_seconds"],
            "epoch_s": last["train_seconds"] + last["val_seconds"], "wall_s": wall,
            "epoch1_train_s": records[0]["train_seconds"], "setting": setting,
            "resolved": {k: resolved.get(k) for k in SHARED}}


def reference_child(args: argparse.Namespace) -> dict[str, Any]:
    """The reference's 2 epochs in this (child) process: official ``train()`` then the official
    per-epoch ``eval_adv_test``; each part's seconds per epoch."""
    from spat.build import load_data, model_for

    t_start = time.perf_counter()
    cfg = train_config(args)
    device = torch.device("cpu")
    data = load_data(cfg)
    torch.manual_seed(cfg.seed)
    ref, scale = R.reference_model(model_for(cfg, data.info))
    assert scale is not None and cfg.eps is not None and cfg.step_size is not None
    train_loader = R.make_loader(data.train.images, data.train.labels,
                                 batch_size=cfg.batch_size, device=device, shuffle=True,
                                 augment=data.info.augment,
                                 generator=torch.Generator().manual_seed(cfg.seed))
    test_loader = R.make_loader(data.val.images, data.val.labels, batch_size=args.eval_batch,
                                device=device, shuffle=False)
    optimizer = R.make_optimizer(ref, cfg.lr, cfg.momentum, cfg.weight_decay)

    def loss(model, x, y, opt):
        return R.spat_loss(model, x, y, opt, step_size=cfg.step_size, epsilon=cfg.eps,
                           perturb_steps=cfg.steps, beta=cfg.beta, m=cfg.m, n=cfg.n, s=scale,
                           num_classes=data.info.num_classes)

    train_s, eval_s = [], []
    for _ in range(2):
        t0 = time.perf_counter()
        R.train_epoch(ref, device, train_loader, optimizer, loss)
        t1 = time.perf_counter()
        R.eval_adv_test(ref, device, test_loader, epsilon=cfg.eps, num_steps=args.eval_steps,
                        step_size=args.eval_step_size)
        t2 = time.perf_counter()
        train_s.append(t1 - t0)
        eval_s.append(t2 - t1)
    return {"train_s": train_s[-1], "val_s": eval_s[-1], "epoch_s": train_s[-1] + eval_s[-1],
            "epoch1_train_s": train_s[0], "in_process_s": time.perf_counter() - t_start,
            "images": len(data.train), "val_images": len(data.val),
            "shared": {k: getattr(cfg, k) for k in SHARED}}


def run_reference(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    out = subprocess.run(reference_command(args), capture_output=True, text=True,
                         env=child_env(args), check=False)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"reference child failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "wall_s": wall}


def check_same_settings(ours: dict[str, Any], ref: dict[str, Any]) -> None:
    """Ours' resolved configuration (its config.json) equals what the reference ran."""
    diff = {k: (ours["resolved"][k], ref["shared"][k]) for k in SHARED
            if ours["resolved"][k] != ref["shared"][k]}
    if diff:
        raise SystemExit(f"ours and the reference ran different settings (ours, reference): "
                         f"{diff}")


# ============================================================================== FLOPs


def flops(args: argparse.Namespace) -> dict[str, Any]:
    """GFLOP of one training step and of one per-epoch evaluation, each side as it runs them
    (``bench.count_flops``: convolutions and matrix products), on the data's real shapes."""
    from spat.build import load_data, method_for, model_for
    from spat.train.validate import evaluate_split

    cfg = train_config(args)
    device = torch.device("cpu")
    data = load_data(cfg)
    torch.manual_seed(cfg.seed)
    model = model_for(cfg, data.info)
    ref, scale = R.reference_model(model)
    assert scale is not None and cfg.eps is not None and cfg.step_size is not None
    split = Split(images=data.train.images[: 2 * cfg.batch_size],
                  labels=data.train.labels[: 2 * cfg.batch_size])
    ours_step = B.OursTrainer(model, method_for(cfg), split, batch=cfg.batch_size,
                              device=device, augment=data.info.augment, amp=False,
                              compile_=False, channels_last=False, seed=cfg.seed)

    def ref_loss(m, x, y, opt):
        return R.spat_loss(m, x, y, opt, step_size=cfg.step_size, epsilon=cfg.eps,
                           perturb_steps=cfg.steps, beta=cfg.beta, m=cfg.m, n=cfg.n, s=scale,
                           num_classes=data.info.num_classes)

    ref_step = B.RefTrainer(ref, ref_loss, split, batch=cfg.batch_size, device=device,
                            augment=data.info.augment, seed=cfg.seed)
    loader = R.make_loader(data.val.images, data.val.labels, batch_size=args.eval_batch,
                           device=device, shuffle=False)
    steps_per_epoch = len(data.train) // cfg.batch_size
    counts = {
        "ours_step": B.count_flops(ours_step.step),
        "ref_step": B.count_flops(ref_step.step),
        "ours_val": B.count_flops(lambda: evaluate_split(model, data.val, cfg, device,
                                                         cfg.val_steps, cfg.seed)),
        "ref_val": B.count_flops(lambda: R.eval_adv_test(
            ref, device, loader, epsilon=cfg.eps, num_steps=args.eval_steps,
            step_size=args.eval_step_size)),
    }
    out: dict[str, Any] = {k: (v or 0) / 1e9 for k, v in counts.items()}
    out["steps_per_epoch"] = steps_per_epoch
    out["ours_train"] = out["ours_step"] * steps_per_epoch
    out["ref_train"] = out["ref_step"] * steps_per_epoch
    return out


# ============================================================================== report


def analysis(res: dict[str, Any]) -> list[str]:
    """Achieved GFLOP/s of each part against the bare matrix product, and the floor of the
    ratio this CPU allows (ours' work at the bf16 matmul rate over the reference's time)."""
    f, med, mm = res.get("flops"), res["medians"], res.get("matmul")
    if not f or not mm:
        return []
    o, r = med["ours"], med["reference"]
    rate = {"ours train": f["ours_train"] / o["train_s"], "ours val": f["ours_val"] / o["val_s"],
            "ref train": f["ref_train"] / r["train_s"], "ref eval": f["ref_val"] / r["val_s"]}
    res["gflops_per_s"] = rate
    bf16, fp32 = mm["bf16"], mm["fp32"]
    lines = ["", "### Where the time goes (FLOPs counted by `bench.count_flops`; rates from the "
                 "median epoch times above)", "",
             "| part | GFLOP per epoch | ours s | ours GFLOP/s | reference GFLOP | reference s | "
             "reference GFLOP/s |", "| --- | --- | --- | --- | --- | --- | --- |",
             f"| training ({f['steps_per_epoch']} steps; per step ours {f['ours_step']:.1f}, "
             f"reference {f['ref_step']:.1f}) | {f['ours_train']:.0f} | {o['train_s']:.2f} | "
             f"{rate['ours train']:.0f} | {f['ref_train']:.0f} | {r['train_s']:.2f} | "
             f"{rate['ref train']:.0f} |",
             f"| per-epoch evaluation | {f['ours_val']:.1f} | {o['val_s']:.2f} | "
             f"{rate['ours val']:.0f} | {f['ref_val']:.1f} | {r['val_s']:.2f} | "
             f"{rate['ref eval']:.0f} |", "",
             f"Bare {mm['size']}² matrix product on {res['env']['torch_threads']} thread(s), best "
             f"of {mm['repeats']}: fp32 **{fp32:.0f} GFLOP/s**, bf16 **{bf16:.0f} GFLOP/s**. "
             f"Ours' training runs at {rate['ours train'] / bf16:.2f}× the bf16 rate "
             f"({res['settings']}), its validation (fp32 by design) at "
             f"{rate['ours val'] / fp32:.2f}× the fp32 rate; the reference trains at "
             f"{rate['ref train'] / fp32:.2f}× the fp32 rate."]
    floor_train = f["ours_train"] / bf16 / r["train_s"]
    floor_epoch = (f["ours_train"] / bf16 + f["ours_val"] / fp32) / r["epoch_s"]
    res["floor"] = {"train": floor_train, "epoch": floor_epoch}
    lines += ["", f"Floor on this CPU: ours' training FLOPs at the bare bf16 matmul rate take "
                  f"{f['ours_train'] / bf16:.2f} s, i.e. a training ratio of at least "
                  f"{floor_train:.3f}; with its fp32 validation at the fp32 matmul rate the whole "
                  f"epoch's ratio is at least {floor_epoch:.3f}."]
    whole = res["ratios"]["epoch"]["median"]
    if whole <= TARGET:
        lines.append(f"The whole-epoch ratio {whole:.3f} is at or below {TARGET}: target met.")
    else:
        need = f["ours_train"] / (TARGET * r["epoch_s"] - o["val_s"]) \
            if TARGET * r["epoch_s"] > o["val_s"] else float("inf")
        lines.append(
            f"The whole-epoch ratio {whole:.3f} is above {TARGET}. With its validation as "
            f"measured ({o['val_s']:.2f} s), ours' training would have to run at {need:.0f} "
            f"GFLOP/s, {need / bf16:.2f}× this CPU's bare bf16 matrix product "
            f"({rate['ours train']:.0f} GFLOP/s now).")
    return lines


def report(args: argparse.Namespace, res: dict[str, Any]) -> str:
    env, rounds, med = res["env"], res["rounds"], res["medians"]
    rat = res["ratios"]
    threads = env["torch_threads"]
    lines = [f"## Whole `spat train --method spat` epoch vs the reference (issue 23), CPU "
             f"({threads} thread{'s' if threads > 1 else ''})", ""]
    lines += C.environment_lines(env) + [""]
    lines += [
        f"{res['what']}. Each round runs both sides once, each in its own process, one after "
        f"the other, in alternated order (AB BA …); both use the 2nd of 2 epochs (the 1st warms "
        f"up; ours' also follows its fast-path calibration).", "",
        f"* **ours**: `{res['ours_command']}` — epoch = `train_seconds` (the epoch's training "
        f"loop: batches, attack, step) + `val_seconds` (clean + PGD-{args.val_steps} on its "
        f"{res['val_images']}-image validation split, fp32, batch 512) of epoch 2 from "
        f"`metrics.jsonl`; the checkpoint written after each epoch is in neither. Fast path "
        f"`auto`, measured afresh in every run (empty `SPAT_CACHE_DIR`). 'command s': the whole "
        f"command (start-up, data, calibration, 2 epochs, checkpoints, a {args.test_images}-"
        f"image PGD-1 final test).",
        f"* **reference**: `benchmarks/reference.py` in a child process — `train_epoch` "
        f"(`make_loader`, `make_optimizer`, `spat_loss`, fp32, eager, NCHW) then the official "
        f"per-epoch `eval_adv_test` (clean + PGD-{args.eval_steps}, η {args.eval_step_size}, "
        f"batch {args.eval_batch}, per-batch `.item()`) on the same {res['val_images']} "
        f"validation images; same architecture (the official cosine head), same training "
        f"images, ε, η, K, β, m, n, s, batch, lr, momentum and weight decay (checked against "
        f"ours' `config.json`). 'process s': the child's whole run.", "",
        "| round | order | ours train s | ours val s | ours epoch s | ours command s | ours auto |"
        " ref train s | ref eval s | ref epoch s | ref process s | train ratio | epoch ratio |",
        "| --- " * 13 + "|"]
    for i, r in enumerate(rounds):
        o, f = r["ours"], r["reference"]
        lines.append(f"| {i + 1} | {r['order']} | {o['train_s']:.2f} | {o['val_s']:.2f} | "
                     f"{o['epoch_s']:.2f} | {o['wall_s']:.1f} | {o['setting']} | "
                     f"{f['train_s']:.2f} | {f['val_s']:.2f} | {f['epoch_s']:.2f} | "
                     f"{f['wall_s']:.1f} | {o['train_s'] / f['train_s']:.3f} | "
                     f"{o['epoch_s'] / f['epoch_s']:.3f} |")
    o, f = med["ours"], med["reference"]
    lines.append(f"| median | | {o['train_s']:.2f} | {o['val_s']:.2f} | {o['epoch_s']:.2f} | "
                 f"{o['wall_s']:.1f} | | {f['train_s']:.2f} | {f['val_s']:.2f} | "
                 f"{f['epoch_s']:.2f} | {f['wall_s']:.1f} | **{rat['train']['median']:.3f}** | "
                 f"**{rat['epoch']['median']:.3f}** |")
    met = "met" if rat["epoch"]["median"] <= TARGET else "not met"
    lines += ["", f"Ratios ours / reference, median [min–max] of the {len(rounds)} per-round "
                  f"ratios: training part {rat['train']['median']:.3f} [{rat['train']['min']:.3f}"
                  f"–{rat['train']['max']:.3f}], whole epoch {rat['epoch']['median']:.3f} "
                  f"[{rat['epoch']['min']:.3f}–{rat['epoch']['max']:.3f}]; target ≤ {TARGET}: "
                  f"**{met}**."]
    lines += analysis(res)
    return "\n".join(lines) + "\n"


# ============================================================================== main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", default="fashion_mnist",
                   help="fashion_mnist (needs --data-dir) or digits (offline; a smoke run)")
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"),
                   help="folder holding FashionMNIST/ in torchvision's layout")
    p.add_argument("--images", type=int, default=1536,
                   help="training images (a fixed subset; a multiple of --batch)")
    p.add_argument("--val-images", type=int, default=256,
                   help="images ours validates each epoch and the reference's eval_adv_test "
                        "attacks")
    p.add_argument("--test-images", type=int, default=50,
                   help="ours' final test after the 2 epochs (not part of an epoch)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=10, help="K, SPAT's training attack steps")
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--step-size", type=float, default=0.01)
    p.add_argument("--lr", type=float, default=0.02, help="spat train's Fashion-MNIST SPAT lr")
    p.add_argument("--weight-decay", type=float, default=0.0,
                   help="spat train's Fashion-MNIST weight decay")
    p.add_argument("--val-steps", type=int, default=10, help="ours' per-epoch validation PGD")
    p.add_argument("--eval-steps", type=int, default=20,
                   help="the reference's per-epoch eval_adv_test PGD steps")
    p.add_argument("--eval-step-size", type=float, default=0.01)
    p.add_argument("--eval-batch", type=int, default=128, help="the reference's test batch")
    p.add_argument("--rounds", type=int, default=3, help="alternated rounds (AB BA …)")
    p.add_argument("--threads", type=int, default=1, help="threads of both sides")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--flops", action=argparse.BooleanOptionalAction, default=True,
                   help="count FLOPs and time the bare matrix products")
    p.add_argument("--matmul-size", type=int, default=2048)
    p.add_argument("--matmul-repeats", type=int, default=7)
    p.add_argument("--write", action=argparse.BooleanOptionalAction, default=True,
                   help="write the section of RESULTS.md")
    p.add_argument("--json", default=None, help="also dump every number to this JSON file")
    p.add_argument("--dry-run", action="store_true",
                   help="print the commands of one round and what is measured; run nothing")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for name in ("images", "val_images", "test_images", "batch", "steps", "val_steps",
                 "eval_steps", "eval_batch", "rounds", "threads", "matmul_size",
                 "matmul_repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.images % args.batch:
        p.error(f"--images {args.images} is not a multiple of --batch {args.batch} (both sides "
                f"must run the same full batches)")
    raw = list(sys.argv[1:] if argv is None else argv)
    if "--child" in raw:
        raw = raw[: raw.index("--child")]
    args.argv = raw
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child == "reference":
        print(json.dumps(reference_child(args)))
        return 0
    if args.child is not None:
        raise SystemExit(f"unknown child task {args.child!r}")
    if args.dataset == "fashion_mnist" and not (Path(args.data_dir) / "FashionMNIST").is_dir():
        print(f"epoch_vs_reference: skipped: no Fashion-MNIST under {args.data_dir} "
              f"(torchvision layout, {args.data_dir}/FashionMNIST/raw); pass --data-dir, or "
              f"--dataset digits for an offline smoke run", flush=True)
        return 0
    cfg = train_config(args)
    ours_cmd = ours_command(args, cfg, "OUT", "NAME")
    shown = "spat train " + " ".join(ours_cmd[4:-6])
    if args.dry_run:
        print(f"ours:      {' '.join(ours_cmd)}")
        print(f"reference: {' '.join(reference_command(args))}")
        print(f"{args.rounds} alternated rounds; epoch 2 of each; FLOPs and matmul: "
              f"{'yes' if args.flops else 'no'}")
        return 0
    env = C.environment(torch.device("cpu"))
    env["command"] = "python benchmarks/epoch_vs_reference.py " + " ".join(args.argv)
    print("\n".join(C.environment_lines(env)), flush=True)
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="spat_epoch_vs_ref_") as tmp:
        for i in range(args.rounds):
            order = ("ours", "reference") if i % 2 == 0 else ("reference", "ours")
            r: dict[str, Any] = {"order": "AB" if i % 2 == 0 else "BA"}
            for side in order:
                r[side] = run_ours(args, cfg, tmp, f"ours{i}") if side == "ours" \
                    else run_reference(args)
                d = r[side]
                print(f"[round {i + 1}] {side:9s} train {d['train_s']:.2f} s  val "
                      f"{d['val_s']:.2f} s  (whole process {d['wall_s']:.1f} s"
                      + (f", auto {d['setting']})" if side == "ours" else ")"), flush=True)
            check_same_settings(r["ours"], r["reference"])
            rounds.append(r)
    ratios = {part: C.summary([r["ours"][f"{part}_s"] / r["reference"][f"{part}_s"]
                               for r in rounds]) for part in ("train", "epoch")}
    medians = {side: {k: C.summary([r[side][k] for r in rounds])["median"]
                      for k in ("train_s", "val_s", "epoch_s", "wall_s")}
               for side in ("ours", "reference")}
    what = (f"{'Fashion-MNIST' if args.dataset == 'fashion_mnist' else args.dataset}, "
            f"small_cnn, {args.images} training images ({args.images // args.batch} batches of "
            f"{args.batch}), SPAT K = {args.steps}, ε {args.eps}, η {args.step_size}, "
            f"{args.threads} thread(s) each")
    res: dict[str, Any] = {"env": env, "what": what, "ours_command": shown, "rounds": rounds,
                           "ratios": ratios, "medians": medians,
                           "val_images": rounds[0]["reference"]["val_images"],
                           "settings": ", ".join(sorted({r["ours"]["setting"]
                                                         for r in rounds}))}
    if args.flops:
        res["flops"] = flops(args)
        res["matmul"] = {"size": args.matmul_size, "repeats": args.matmul_repeats,
                         **{name: C.matmul_gflops(dt, args.matmul_size, args.matmul_repeats)
                            for name, dt in (("fp32", torch.float32),
                                             ("bf16", torch.bfloat16))}}
    env["load_average_end"] = C.load_average()
    text = report(args, res)
    print("\n" + text, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=str))
    if args.write:
        key = f"epoch-vs-reference cpu {args.dataset} threads{args.threads}"
        C.write_section(key, text)
        print(f"wrote section '{key}' of {C.RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
