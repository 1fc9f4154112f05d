"""The attacks of ``spat eval``: one registry (:data:`ATTACKS`) of names, defaults and how
each one is built.

White-box attacks are steps of the one attack engine (:mod:`spat.attacks`) on an objective
(:data:`spat.attacks.objectives.OBJECTIVES`), each described by its entry; AutoAttack (Croce &
Hein, arXiv 2003.01690) runs through :mod:`spat.attacks.autoattack`. A new attack is an
objective plus one entry: :func:`register_attack` (a plugin's, :mod:`spat.utils.plugins`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from spat.attacks.objectives import Objective
from spat.attacks.presets import AttackSpec, default_step_size
from spat.errors import SpatError


@dataclass(frozen=True)
class AttackChoice:
    """One selectable attack: an entry of :data:`ATTACKS`.

    Attributes:
        key: command-line name ("pgd20").
        kind: "fgsm", "pgd", "cw" or "autoattack"; a plugin's attack its own family name.
        steps: iterations of a white-box attack (None for AutoAttack).
        version: AutoAttack version ("standard" or "fast"), None otherwise.
        summary: one line for ``--help`` and the docs.
        objective: a white-box attack's objective, a name in
            :data:`spat.attacks.objectives.OBJECTIVES` ("ce", "cw"); None for AutoAttack.
        prefix: the report name's stem: ``PREFIX-steps`` ("PGD-20"), or ``PREFIX`` alone for a
            single step from the clean image ("FGSM").
        init: the random start ("uniform"; "none": from the clean image, and no restarts).
        step: the step size as a multiple of ε (FGSM: 1); None: ``--step-size``, else
            :func:`spat.attacks.presets.default_step_size`.
    """

    key: str
    kind: str
    steps: int | None
    version: str | None
    summary: str
    objective: str | None = None
    prefix: str = ""
    init: str = "uniform"
    step: float | None = None

    def name(self, restarts: int = 1) -> str:
        """The report/npz name: "FGSM", "PGD-20", "CW-100x3", "AutoAttack"."""
        if self.kind == "autoattack":
            assert self.version is not None
            return AA_NAMES[self.version]
        if self.init == "none":
            return self.prefix if self.steps == 1 else f"{self.prefix}-{self.steps}"
        return f"{self.prefix}-{self.steps}" + (f"x{restarts}" if restarts > 1 else "")


    def passes(self) -> int:
        """Rough gradient passes per example (the study's time estimate): the steps of a
        white-box attack; AutoAttack's (on the points still robust) an upper-end guess."""
        if self.steps is not None:
            return self.steps
        assert self.version is not None
        return AA_PASSES[self.version]


AA_NAMES = {"standard": "AutoAttack", "fast": "AutoAttack-fast"}
AA_PASSES = {"standard": 7000, "fast": 1000}
#: The one registry of ``spat eval``'s attacks, key → entry, in the order they run and
#: accumulate (the "worst case so far" column); :func:`register_attack` appends a plugin's.
ATTACKS: dict[str, AttackChoice] = {c.key: c for c in (
    AttackChoice("fgsm", "fgsm", 1, None,
                 "FGSM (arXiv 1412.6572): one step of size ε on the cross-entropy, from the "
                 "clean image (no random start)", objective="ce", prefix="FGSM", init="none",
                 step=1.0),
    AttackChoice("pgd20", "pgd", 20, None,
                 "PGD-20 (arXiv 1706.06083): 20 steps of η on the cross-entropy, uniform random "
                 "start in the ε-ball, --restarts starts (worst case kept)", objective="ce",
                 prefix="PGD"),
    AttackChoice("pgd100", "pgd", 100, None, "PGD-100: as PGD-20 with 100 steps",
                 objective="ce", prefix="PGD"),
    AttackChoice("cw20", "cw", 20, None,
                 "CW-20: PGD on the Carlini-Wagner margin max_{j!=y} z_j - z_y (arXiv "
                 "1608.04644), 20 steps of η, uniform random start, --restarts starts",
                 objective="cw", prefix="CW"),
    AttackChoice("cw100", "cw", 100, None, "CW-100: as CW-20 with 100 steps", objective="cw",
                 prefix="CW"),
    AttackChoice("aa-fast", "autoattack", None, "fast",
                 "AutoAttack, fast: APGD-CE (100 iterations, 1 restart) then APGD-T (targeted "
                 "DLR, 100 iterations, 9 target classes), each on the still-robust points"),
    AttackChoice("aa", "autoattack", None, "standard",
                 "AutoAttack, standard (arXiv 2003.01690; RobustBench's number): APGD-CE, "
                 "APGD-T, FAB-T (arXiv 1907.02044; 100 iterations, 9 targets) and Square "
                 "(arXiv 1912.00049; 5000 queries, p_init 0.8), each on the still-robust points"),
)}
#: The keys of :data:`ATTACKS`, a live view (a plugin's attacks included once registered).
ATTACK_KEYS = ATTACKS.keys()
#: ``spat eval``'s default: the field's white-box set plus standard AutoAttack.
DEFAULT_ATTACKS: tuple[str, ...] = ("fgsm", "pgd20", "pgd100", "cw20", "aa")
_KEY = re.compile(r"^[a-z][a-z0-9_.-]*$")


def register_attack(key: str, objective: Objective | str, *, steps: int, summary: str,
                    prefix: str | None = None, init: str = "uniform",
                    step: float | None = None, kind: str | None = None) -> AttackChoice:
    """Add a white-box attack to ``spat eval`` (``--attacks KEY``, its help and choices) and to
    the study files' ``[eval] attacks``: ``steps`` steps of the one attack engine ascending
    ``objective`` (a function ``(logits_adv, y) -> (N,)`` to maximise, registered in
    :data:`~spat.attacks.objectives.OBJECTIVES` under ``key``, or the name of one there), from
    ``init``, with ``step`` ·ε steps (None: ``--step-size`` or the default ε/4). The report
    names it ``PREFIX-steps`` (``prefix`` defaults to ``key`` without its trailing digits, in
    capitals). A plugin's one entry; returns it. A key already registered is a ``ValueError``
    unless the entry is the same (a plugin imported twice)."""
    from spat.attacks.geometry import INITS
    from spat.attacks.objectives import OBJECTIVES

    if not _KEY.match(key):
        raise ValueError(f"attack key {key!r}: lower-case letters, digits, '_', '.', '-', "
                         f"starting with a letter")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"attack {key!r}: steps must be an integer >= 1, got {steps!r}")
    if init not in INITS:
        raise ValueError(f"attack {key!r}: unknown random start {init!r} "
                         f"(valid: {', '.join(INITS)})")
    if isinstance(objective, str):
        if objective not in OBJECTIVES:
            raise ValueError(f"attack {key!r}: unknown objective {objective!r} "
                             f"(valid: {', '.join(OBJECTIVES)})")
        name = objective
    else:
        if not callable(objective):
            raise ValueError(f"attack {key!r}: the objective must be a function "
                             f"(logits_adv, y) -> per-example loss, got {objective!r}")
        name = key
    stem = prefix or (key.rstrip("0123456789") or key).upper()
    entry = AttackChoice(key, kind or stem.lower(), steps, None, summary, objective=name,
                         prefix=stem, init=init, step=step)
    if key in ATTACKS and ATTACKS[key] != entry:
        raise ValueError(f"attack {key!r} is already registered")
    if not isinstance(objective, str):
        OBJECTIVES[name] = objective
    ATTACKS[key] = entry
    return entry


def parse_attacks(text: str | list[str] | tuple[str, ...]) -> list[str]:
    """``"pgd20,aa"`` → ``["pgd20", "aa"]`` in the canonical order, duplicates and ``clean``
    dropped (clean is always evaluated). An unknown name is a one-line :class:`SpatError`."""
    items = text.split(",") if isinstance(text, str) else list(text)
    keys = [t.strip().lower() for t in items if t.strip()]
    unknown = [k for k in keys if k not in ATTACKS and k != "clean"]
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
    """The :class:`AttackSpec` of a white-box attack key (fgsm, pgdK, cwK, a plugin's), read
    from its :data:`ATTACKS` entry."""
    choice = ATTACKS[key]
    if restarts < 1:
        raise SpatError(f"restarts must be >= 1, got {restarts}")
    if choice.objective is None or choice.steps is None:
        raise SpatError(f"attack {key!r} of kind {choice.kind!r} is not a white-box attack "
                        f"(it has no objective for the attack engine)")
    if choice.init == "none":
        restarts = 1  # from the clean image: every start is the same
    if choice.step is not None:
        step_size = choice.step * eps
    elif step_size is None:
        step_size = default_step_size(eps, choice.steps)
    return AttackSpec(name=choice.name(restarts), objective=choice.objective, eps=eps,
                      step_size=step_size, steps=choice.steps, norm=norm, init=choice.init,
                      restarts=restarts)


def attack_name(key: str, *, restarts: int = 1) -> str:
    """The report/npz name of an attack key: "FGSM", "PGD-20", "CW-100x3", "AutoAttack"."""
    choice = ATTACKS[key]
    return choice.name(1 if choice.init == "none" else restarts)


_AA_ALIASES = {"autoattack": "aa", "aafast": "aa-fast", "autoattack-fast": "aa-fast"}


def _families() -> dict[str, str]:
    """Lower-case report-name stem → stem, of the registered multi-step attacks ("pgd" →
    "PGD"): the families whose any step count and ``xR`` suffix a name may spell."""
    return {c.prefix.lower(): c.prefix for c in ATTACKS.values()
            if c.objective is not None and c.init != "none"}


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
    t = _AA_ALIASES.get(t, t)
    families = _families()
    stems = "|".join(re.escape(f) for f in sorted(families, key=len, reverse=True))
    m = re.fullmatch(rf"({stems})[-_ ]?(\d+)(?:x(\d+))?", t) if stems else None
    if t in ATTACKS:
        out = attack_name(t)
    elif m:
        steps, restarts = int(m[2]), int(m[3] or 1)
        out = f"{families[m[1]]}-{steps}" + (f"x{restarts}" if restarts > 1 else "")
    elif t in {c.name().lower(): c for c in ATTACKS.values()}:
        out = next(c.name() for c in ATTACKS.values() if c.name().lower() == t)
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
