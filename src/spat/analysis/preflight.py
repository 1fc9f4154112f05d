"""Checks that ``spat analyze`` and ``spat compare`` run before they write anything.

Both commands cache predictions in ``RUN/analysis/`` while they work; a refusal that comes after
such a write (an unknown ``--attack`` or ``--class``, a second path that is not a run, a corrupted
checkpoint of the second run) would leave files behind. So every input that can be refused is
checked first: each path is a run whose checkpoint loads (weights finite, state and data.json
valid), the attack is one the predictions will hold, and the class is one of the runs' classes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from spat.errors import SpatError
from spat.validation import one_line

ATTACK_PREFIX = "adv/"


def predicted_attacks(run: Path, *, recompute: bool, steps: int) -> list[str]:
    """The attacks whose predictions ``collect`` will analyse for ``run``: those of
    ``RUN/eval/predictions.npz`` (unless ``recompute``), else the PGD-``steps`` it computes."""
    npz = run / "eval" / "predictions.npz"
    if recompute or not npz.is_file():
        return [f"PGD-{steps}"]
    try:
        with np.load(npz, allow_pickle=False) as z:
            files = list(z.files)
    except Exception as e:  # not a zip, truncated, ...: corrupted data either way
        raise SpatError(f"cannot read predictions {npz} ({type(e).__name__}: "
                        f"{one_line(e, 160)})") from None
    missing = [k for k in ("labels", "clean") if k not in files]
    if missing:
        raise SpatError(f"predictions {npz} are corrupted (missing {', '.join(missing)})")
    return [f[len(ATTACK_PREFIX):] for f in files if f.startswith(ATTACK_PREFIX)]


def check_attack(attack: str | None, available: Sequence[str], where: str) -> None:
    """``attack`` (if given) must be one of ``available``; one line listing them otherwise."""
    if attack is not None and attack not in available:
        raise SpatError(f"unknown attack {attack!r} in the predictions of {where} (valid: "
                        f"{', '.join(available) or 'none'})")


def preflight_runs(runs: Sequence[str | os.PathLike[str]], *, which: str = "best",
                   attack: str | None = None, class_name: str | None = None,
                   recompute: bool = False, steps: int = 20) -> list[list[str]]:
    """Refuse, before anything is written, what ``spat compare`` would refuse later.

    Each path must be a run directory whose ``which`` checkpoint loads (see
    :func:`spat.build.load_run`); ``attack`` must be in every run's predictions and
    ``class_name`` among the first run's classes. Returns each run's class names.
    """
    from spat.build import load_run

    names: list[list[str]] = []
    attacks: list[str] | None = None
    for r in runs:
        run = Path(r)
        if not run.is_dir():
            raise SpatError(f"run directory {run} not found")
        if not (run / "config.json").is_file() and not (run / "checkpoints").is_dir():
            raise SpatError(f"{run} is not a run directory (no config.json or checkpoints/)")
        names.append([str(n) for n in load_run(run, which=which, device="cpu").info.class_names])
        have = predicted_attacks(run, recompute=recompute, steps=steps)
        attacks = have if attacks is None else [a for a in attacks if a in have]
    if attack is not None and attacks is not None:
        check_attack(attack, attacks, "all runs" if len(runs) > 1 else str(runs[0]))
    if class_name is not None and names and class_name not in names[0]:
        raise SpatError(f"unknown class {class_name!r} (valid: {', '.join(names[0])})")
    return names
