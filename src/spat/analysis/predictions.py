"""Where the predictions ``spat analyze`` analyses come from, and their cache.

Predictions come from ``RUN/eval/predictions.npz`` (written by ``spat eval``; every attack in
it is used) when that exists; otherwise clean and PGD-20 predictions at the run's ε are computed
on the test split and cached as ``OUT/predictions.npz`` (with ``predictions.json`` saying what
they are), so a second analysis does not attack again.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from spat.data.subset import SUBSET_RULE, subset_split
from spat.errors import SpatError
from spat.evaluation.attacks import resolve_attack_name
from spat.evaluation.core import Predictions
from spat.utils.io import atomic_write_text
from spat.utils.progress import Progress
from spat.validation import loads_json

Log = Callable[[str], None]

#: The attack computed here when no ``RUN/eval/predictions.npz`` exists.
DEFAULT_STEPS = 20


# ----------------------------------------------------------------------------- eval report
def read_eval_report(run_dir: Path) -> dict[str, Any] | None:
    """``RUN/eval/report.json`` if it exists and is a valid report (else ``None``: the report
    only adds optional numbers, so an unreadable or edited one is ignored)."""
    from spat.utils.log import logger
    from spat.validation import check_eval_report, read_json_object

    path = run_dir / "eval" / "report.json"
    if not path.is_file():
        return None
    try:
        return check_eval_report(read_json_object(path, what="evaluation report"), str(path))
    except SpatError as e:
        logger.warning("ignoring %s", e)
        return None


def _same_checkpoint(a: Any, b: Any) -> bool:
    try:
        return Path(str(a)).resolve() == Path(str(b)).resolve()
    except (OSError, ValueError):
        return str(a) == str(b)


# ----------------------------------------------------------------------------- predictions
def _prediction_meta(checkpoint: str, eps: float, norm: str, steps: int, limit: int | None,
                     n: int) -> dict[str, Any]:
    return {"checkpoint": checkpoint, "split": "test", "eps": eps, "norm": norm,
            "attack": f"PGD-{steps}", "steps": steps, "limit": limit, "examples": n,
            **({"subset": f"{SUBSET_RULE} 0"} if limit is not None else {})}


def obtain_predictions(
    run_dir: Path, out_dir: Path, model: torch.nn.Module, cfg: Any, test_split: Any,
    *, checkpoint: str, limit: int | None, batch_size: int, device: torch.device,
    recompute: bool, log: Log, steps: int = DEFAULT_STEPS,
) -> tuple[Predictions, str]:
    """The predictions to analyse and where they came from (see the module docstring)."""
    eval_npz = run_dir / "eval" / "predictions.npz"
    if eval_npz.is_file() and not recompute:
        log(f"using the predictions of spat eval: {eval_npz}")
        report = read_eval_report(run_dir) or {}
        evaluated = report.get("checkpoint")
        if evaluated and not _same_checkpoint(evaluated, checkpoint):
            log(f"warning: spat eval evaluated {evaluated}, the similarities below use "
                f"{checkpoint} (pass --which to match, or --recompute)")
        return Predictions.load(eval_npz), str(eval_npz)
    cache = out_dir / "predictions.npz"
    meta_path = out_dir / "predictions.json"
    if test_split is None:
        raise SpatError(f"no {eval_npz} and the test data could not be loaded to compute "
                        "predictions (pass --data-dir, or run spat eval first)")
    n = len(test_split) if limit is None else min(limit, len(test_split))
    meta = _prediction_meta(checkpoint, float(cfg.eps), cfg.norm, steps, limit, n)
    if cache.is_file() and meta_path.is_file() and not recompute:
        try:
            if loads_json(meta_path.read_text(encoding="utf-8")) == meta:
                log(f"no {eval_npz}: using the cached predictions {cache}")
                return Predictions.load(cache), str(cache)
        except (ValueError, OSError):  # not JSON, not UTF-8, nested too deeply: recompute
            pass
    from spat.attacks import pgd
    from spat.evaluation.core import predict_under_attacks
    from spat.utils.rng import final_test_seed  # the seed of the run's final test

    log(f"no {eval_npz}: computing clean and PGD-{steps} (ε={cfg.eps:.4g}, "
        f"{cfg.norm}) predictions on {n} test examples; cached as {cache}")
    split = subset_split(test_split, limit)
    gen = torch.Generator(device=device).manual_seed(final_test_seed(int(cfg.seed)))
    with Progress(stderr=True, transient=True) as bars:
        on_batch = bars.counter(f"  PGD-{steps}", len(split))
        preds = predict_under_attacks(model, split, [pgd(float(cfg.eps), steps=steps,
                                                         norm=cfg.norm)],
                                      batch_size=batch_size, device=device, generator=gen,
                                      on_batch=on_batch)
    out_dir.mkdir(parents=True, exist_ok=True)
    preds.save(cache)
    atomic_write_text(meta_path, json.dumps(meta, indent=2))
    return preds, str(cache)


def choose_attack(attacks: Sequence[str], wanted: str | None) -> str:
    """``wanted`` if given (must exist; a stored name such as ``PGD-20`` or its command-line
    key ``pgd20``, see :func:`~spat.evaluation.attacks.resolve_attack_name`), else PGD-20, else
    the first PGD, else the first."""
    if not attacks:
        raise SpatError("the predictions hold no attack (only clean predictions)")
    if wanted is not None:
        try:
            return resolve_attack_name(wanted, attacks)
        except KeyError:
            raise SpatError(f"unknown attack {wanted!r} in the predictions "
                            f"(valid: {', '.join(attacks)})") from None
    if "PGD-20" in attacks:
        return "PGD-20"
    return next((a for a in attacks if a.upper().startswith("PGD")), attacks[0])

