"""The attacks of ``spat eval``: names, defaults and how each one is built.

White-box attacks are presets of the one attack engine (:mod:`spat.attacks`); AutoAttack
(Croce & Hein, arXiv 2003.01690) runs through :mod:`spat.attacks.autoattack`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from spat.attacks.presets import AttackSpec, cw, fgsm, pgd
from spat.errors import SpatError


@dataclass(frozen=True)
class AttackChoice:
    """One selectable attack.

    Attributes:
        key: command-line name ("pgd20").
        kind: "fgsm", "pgd", "cw" or "autoattack".
        steps: iterations of a white-box attack (None for AutoAttack).
        version: AutoAttack version ("standard" or "fast"), None otherwise.
        summary: one line for ``--help`` and the docs.
    """

    key: str
    kind: str
    steps: int | None
    version: str | None
    summary: str


#: Every attack, in the order they run and accumulate (the "worst case so far" column).
CHOICES: tuple[AttackChoice, ...] = (
    AttackChoice("fgsm", "fgsm", 1, None,
                 "FGSM (arXiv 1412.6572): one step of size ε on the cross-entropy, from the "
                 "clean image (no random start)"),
    AttackChoice("pgd20", "pgd", 20, None,
                 "PGD-20 (arXiv 1706.06083): 20 steps of η on the cross-entropy, uniform random "
                 "start in the ε-ball, --restarts starts (worst case kept)"),
    AttackChoice("pgd100", "pgd", 100, None, "PGD-100: as PGD-20 with 100 steps"),
    AttackChoice("cw20", "cw", 20, None,
                 "CW-20: PGD on the Carlini-Wagner margin max_{j!=y} z_j - z_y (arXiv "
                 "1608.04644), 20 steps of η, uniform random start, --restarts starts"),
    AttackChoice("cw100", "cw", 100, None, "CW-100: as CW-20 with 100 steps"),
    AttackChoice("aa-fast", "autoattack", None, "fast",
                 "AutoAttack, fast: APGD-CE (100 iterations, 1 restart) then APGD-T (targeted "
                 "DLR, 100 iterations, 9 target classes), each on the still-robust points"),
    AttackChoice("aa", "autoattack", None, "standard",
                 "AutoAttack, standard (arXiv 2003.01690; RobustBench's number): APGD-CE, "
                 "APGD-T, FAB-T (arXiv 1907.02044; 100 iterations, 9 targets) and Square "
                 "(arXiv 1912.00049; 5000 queries, p_init 0.8), each on the still-robust points"),
)
BY_KEY = {c.key: c for c in CHOICES}
ATTACK_KEYS = tuple(BY_KEY)
#: ``spat eval``'s default: the field's white-box set plus standard AutoAttack.
DEFAULT_ATTACKS: tuple[str, ...] = ("fgsm", "pgd20", "pgd100", "cw20", "aa")
AA_NAMES = {"standard": "AutoAttack", "fast": "AutoAttack-fast"}


def parse_attacks(text: str | list[str] | tuple[str, ...]) -> list[str]:
    """``"pgd20,aa"`` → ``["pgd20", "aa"]`` in the canonical order, duplicates and ``clean``
    dropped (clean is always evaluated). An unknown name is a one-line :class:`SpatError`."""
    items = text.split(",") if isinstance(text, str) else list(text)
    keys = [t.strip().lower() for t in items if t.strip()]
    unknown = [k for k in keys if k not in BY_KEY and k != "clean"]
    if unknown:
        raise SpatError(f"unknown attack {unknown[0]!r} (valid: clean, {', '.join(ATTACK_KEYS)})")
    return [k for k in ATTACK_KEYS if k in keys]


def require_attacks(keys: Iterable[str], what: str = "--attacks") -> None:
    """Refuse an evaluation that would attack nothing (``--attacks ''``, ``','``, ``clean``),
    in one line: its report and predictions would replace a run's robust accuracies with clean
    accuracy alone. (:func:`spat.evaluation.evaluate` itself accepts no attacks.)"""
    if not list(keys):
        raise SpatError(f"{what} names no attack to run (valid: {', '.join(ATTACK_KEYS)}; clean "
                        f"accuracy is always evaluated)")


def white_box_spec(key: str, eps: float, norm: str, *, restarts: int = 1,
                   step_size: float | None = None) -> AttackSpec:
    """The :class:`AttackSpec` of a white-box attack key (fgsm, pgdK, cwK)."""
    choice = BY_KEY[key]
    if restarts < 1:
        raise SpatError(f"restarts must be >= 1, got {restarts}")
    if choice.kind == "fgsm":
        return fgsm(eps, norm=norm)
    makers = {"pgd": pgd, "cw": cw}
    if choice.kind not in makers:  # a new kind needs its maker here, never a silent fallback
        raise SpatError(f"attack {key!r} of kind {choice.kind!r} is not a white-box attack "
                        f"(white-box kinds: fgsm, {', '.join(makers)})")
    assert choice.steps is not None
    return makers[choice.kind](eps, steps=choice.steps, step_size=step_size,
                               restarts=restarts, norm=norm)


def attack_name(key: str, *, restarts: int = 1) -> str:
    """The report/npz name of an attack key: "FGSM", "PGD-20", "CW-100x3", "AutoAttack"."""
    choice = BY_KEY[key]
    if choice.kind == "autoattack":
        assert choice.version is not None
        return AA_NAMES[choice.version]
    return white_box_spec(key, 1.0, "linf", restarts=restarts).name



_WHITE_BOX = re.compile(r"(pgd|cw)[-_ ]?(\d+)(?:x(\d+))?")
_AA_ALIASES = {"aa": "standard", "autoattack": "standard", "aa-fast": "fast",
               "aafast": "fast", "autoattack-fast": "fast"}


def resolve_attack_name(name: str, available: Iterable[str] | None = None) -> str:
    """The report/predictions name of an attack given in either namespace: the command-line
    key (``"pgd20"``, ``"cw100"``, ``"fgsm"``, ``"aa"``, ``"aa-fast"``; any PGD/CW step count and
    an ``xR`` restart suffix, as training's ``"pgd10"`` validation attack) or the name itself
    (``"PGD-20"``, ``"AutoAttack"``), case-insensitively.

    With ``available`` (the names a record holds), an exact member is returned as it is, and the
    result must be one of them, else a ``KeyError`` listing them. Without it, the canonical name
    of a recognised spelling (an unrecognised one is returned unchanged).
    """
    names = None if available is None else list(available)
    if names is not None and name in names:
        return name
    t = name.strip().lower()
    m = _WHITE_BOX.fullmatch(t)
    if m:
        steps, restarts = int(m[2]), int(m[3] or 1)
        out = f"{m[1].upper()}-{steps}" + (f"x{restarts}" if restarts > 1 else "")
    elif t == "fgsm":
        out = "FGSM"
    elif t in _AA_ALIASES:
        out = AA_NAMES[_AA_ALIASES[t]]
    else:
        out = name
    if names is None:
        return out
    if out not in names:
        folded = [n for n in names if n.lower() == out.lower()]
        if len(folded) != 1:
            raise KeyError(f"no attack {name!r} here (valid: {', '.join(names) or 'none'})")
        out = folded[0]
    return out
