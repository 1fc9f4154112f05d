"""Evaluation attacks on a trained run in NCHW (contiguous) against NHWC (channels_last).

``spat eval RUN`` puts the run's model in NHWC where the run's ``channels_last`` switch resolves
to on (``auto``: CPU and CUDA). This measures what that buys on this machine: the same
evaluation (same run, checkpoint, examples, attacks and seeds) in both layouts, in alternating
order over ``--rounds`` rounds, one thread; per attack the median seconds of each layout, the
paired ratio NHWC / NCHW per round, and how many per-example predictions differ between the two
layouts (float rounding may move a borderline example; 0 is expected). A trained run is needed:
how long AutoAttack takes depends on how many points stay robust.

    PYTHONPATH=src:. python benchmarks/eval_memory_format.py --run RUN --attacks pgd20,aa \\
        --n-examples 200 --rounds 3 --write
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    environment,
    environment_lines,
    load_average,
    setup_path,
    write_section,
)

setup_path()


def one_evaluation(run: str, which: str, nhwc: bool, opts: Any) -> dict[str, Any]:
    """Load ``run`` afresh, put it in the layout by ``spat eval``'s own helper (its switch forced
    on or off), evaluate; seconds per attack, predictions."""
    from spat.build import load_data, load_run
    from spat.evaluation import evaluate
    from spat.evaluation.evaluate_run import _memory_format

    loaded = load_run(run, which=which)
    model, cfg = loaded.model, loaded.config
    _memory_format(model, "on" if nhwc else "off", "cpu")
    data = load_data(cfg)
    t0 = time.perf_counter()
    report = evaluate(model, data.test, opts.with_threat(float(cfg.eps), cfg.norm),
                      device="cpu", progress=False, log=lambda _s: None)
    total = time.perf_counter() - t0
    seconds = {a["name"]: a["seconds"] for a in report.data["attacks"]}
    preds = {k: v.clone() for k, v in report.predictions.adversarial.items()}
    accuracy = {a["name"]: a["accuracy"] for a in report.data["attacks"]}
    return {"seconds": seconds, "total": total, "predictions": preds, "accuracy": accuracy}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="a trained run directory (or checkpoint)")
    p.add_argument("--which", default="best")
    p.add_argument("--attacks", default="pgd20,aa")
    p.add_argument("--n-examples", dest="n_examples", type=int, default=200)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--write", action="store_true", help="replace this section of RESULTS.md")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    import torch

    from spat.evaluation import EvalOptions

    torch.set_num_threads(args.threads)
    opts = EvalOptions(attacks=tuple(a.strip() for a in args.attacks.split(",") if a.strip()),
                       n_examples=args.n_examples, sanity_examples=0)
    rows: dict[str, list[dict[str, Any]]] = {"nchw": [], "nhwc": []}
    loads = [load_average()]
    for r in range(args.rounds):
        order = ("nchw", "nhwc") if r % 2 == 0 else ("nhwc", "nchw")
        for layout in order:
            res = one_evaluation(args.run, args.which, layout == "nhwc", opts)
            rows[layout].append(res)
            print(f"round {r + 1}/{args.rounds} {layout}: {res['total']:.1f} s "
                  + ", ".join(f"{k} {v:.1f} s" for k, v in res["seconds"].items()), flush=True)
        loads.append(load_average())
    names = list(rows["nchw"][0]["seconds"])
    lines = [f"## Evaluation attacks, NCHW vs NHWC (`spat eval`'s channels_last), "
             f"{args.threads} thread(s)", "",
             f"`PYTHONPATH=src:. python benchmarks/eval_memory_format.py --run {args.run} "
             f"--attacks {args.attacks} --n-examples {args.n_examples} --rounds {args.rounds}"
             f"{' --threads ' + str(args.threads) if args.threads != 1 else ''} --write`", "",
             *environment_lines(environment(torch.device("cpu"))),
             f"- load average before/after each round: {', '.join(loads)}", "",
             "| attack | accuracy | NCHW median s | NHWC median s | NHWC / NCHW per round "
             "(median [min–max]) | predictions that differ |",
             "|---|---|---|---|---|---|"]
    out: dict[str, Any] = {"run": args.run, "attacks": names, "rounds": args.rounds,
                           "n_examples": args.n_examples, "per_attack": {}}
    for name in [*names, "total"]:
        def secs(layout: str, name: str = name) -> list[float]:
            return [x["total"] if name == "total" else x["seconds"][name] for x in rows[layout]]

        a, b = secs("nchw"), secs("nhwc")
        ratios = [y / x for x, y in zip(a, b, strict=True)]
        if name == "total":
            acc, differ = "", ""
        else:
            acc = f"{100 * rows['nchw'][0]['accuracy'][name]:.1f} %"
            differ = str(int((rows["nchw"][0]["predictions"][name]
                              != rows["nhwc"][0]["predictions"][name]).sum()))
        lines.append(f"| {name} | {acc} | {statistics.median(a):.1f} | "
                     f"{statistics.median(b):.1f} | **{statistics.median(ratios):.2f}** "
                     f"[{min(ratios):.2f}–{max(ratios):.2f}] | {differ} |")
        out["per_attack"][name] = {"nchw": a, "nhwc": b, "ratios": ratios}
    body = "\n".join(lines) + "\n"
    print(body)
    if args.write:
        write_section(f"eval-memory-format-{args.threads}t", body)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
