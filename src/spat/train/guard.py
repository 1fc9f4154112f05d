"""The collapse and plateau guard: reads the per-epoch records a run already writes
(``metrics.jsonl``) and says when training has gone wrong, in one line with a remedy.

Four findings, each a pure function of the records (so the training loop, ``spat study`` and a
test with hand-made records use the same code), each reported once per run, at the first epoch
it holds:

* ``diverged``: the training loss exploded (:data:`EXPLODE_FACTOR`); a NaN/inf loss is caught
  earlier, inside the epoch, by the loop's own check (:class:`spat.train.loop.NonFiniteLoss`);
* ``collapsed``: a run that had learned (:data:`LEARNED_MARGIN`) now gives a constant
  output: almost all validation predictions in one class (:data:`CONSTANT_SHARE`), or the
  training loss at the value of the uniform prediction with chance training accuracy for
  :data:`UNIFORM_EPOCHS` epochs (:data:`UNIFORM_TOL`);
* ``adv_drop``: the accuracy on the training adversary's examples fell by more than
  :data:`ADV_DROP` in one epoch;
* ``plateau``: after ``plateau_epochs`` epochs the accuracy has never left chance (SPAT's
  self-paced plateau at a large s, or a method that cannot train at these settings).

The thresholds were set on the 210 committed runs of ``docs/study`` (their ``metrics.jsonl``):
each docstring below says what the healthy runs did and what the known collapses did.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

#: ``diverged`` when the epoch's training loss exceeds this multiple of the uniform-prediction
#: loss U (ln K for a CE-based method). An untrained network starts near U and training lowers
#: it: every committed study run that trained stayed below 1.9·U (TRADES' worst epoch, 4.4 for
#: K = 10), while SPAT's divergences (MNIST lr 0.1; the digits at s = 32) were at 40-80·U in
#: their first epoch and reached 10⁶-10²² ·U.
EXPLODE_FACTOR = 10.0
#: ``collapsed`` when at least this share of the validation predictions is one class: a
#: constant network predicts one class for every input. A trained one spreads its predictions
#: over the classes as the data does (a share near 1/K for balanced classes), and even an
#: untrained one rarely puts 90 % in one class after its first epoch.
CONSTANT_SHARE = 0.9
#: ``collapsed`` (without a validation split too) when the training loss is within this
#: relative distance of the uniform-prediction loss U ... (2 %: the collapsed epochs of the
#: committed runs sat within 0.8 % of U, e.g. MART on the digits at 2.412 = ln 10 − ln 0.9001)
UNIFORM_TOL = 0.02
#: ... and the accuracy (:func:`accuracy_of`) is at chance, for this many consecutive epochs.
#: The loss alone is not enough: a healthy MART run passes through U in epochs 2-4 on its way
#: down (with 40 % training accuracy), and one epoch at U can be a passing moment.
UNIFORM_EPOCHS = 2
#: ``adv_drop`` when the accuracy on the training adversary's examples falls by more than this
#: (a fraction, 0.30 = 30 points) from one epoch to the next. Healthy committed runs never fell
#: by more than 27 points in one epoch (SPAT oscillating at lr 0.05 on the digits; 22 for the
#: worst stable run); the collapses fell by 33-69 points (MART at lr 0.05 on the digits: 37 and
#: 34 points, then a constant output).
ADV_DROP = 0.30
#: "At chance": accuracy at most 1/K plus this share of the way from chance to 100 % (19 % for
#: K = 10). A collapsed or not-yet-trained network scores the share of its one class (8-17 % on
#: the study's validation splits); SPAT's plateau sits at 10-15 %.
CHANCE_MARGIN = 0.1
#: "Had learned" (what makes a later constant output a collapse, not a plateau): accuracy more
#: than this share of the way from chance to 100 % (55 % for K = 10) at an earlier epoch. SPAT's
#: self-paced plateau wobbles up to 20-30 % and back to one class in its first epochs, which is
#: the plateau, not a collapse; the committed collapses came after 70-98 %.
LEARNED_MARGIN = 0.5

KINDS = ("diverged", "collapsed", "adv_drop", "plateau")


@dataclass(frozen=True)
class Finding:
    """One thing the guard saw: its kind (:data:`KINDS`), the 1-based epoch it was seen at,
    and what was seen (with the numbers)."""

    kind: str
    epoch: int
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def chance_level(num_classes: int) -> float:
    """The highest accuracy that still counts as chance (:data:`CHANCE_MARGIN`)."""
    c = 1.0 / max(1, num_classes)
    return c + CHANCE_MARGIN * (1.0 - c)


def learned_level(num_classes: int) -> float:
    """The accuracy above which a run counts as having learned (:data:`LEARNED_MARGIN`)."""
    c = 1.0 / max(1, num_classes)
    return c + LEARNED_MARGIN * (1.0 - c)


def _num(r: Mapping[str, Any], key: str) -> float | None:
    v = r.get(key)
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def accuracy_of(r: Mapping[str, Any]) -> float | None:
    """The accuracy a record says the network has: validation clean accuracy, else the training
    clean accuracy, else the accuracy on the training adversary's examples."""
    for key in ("val_clean_acc", "train_clean_acc", "train_adv_acc"):
        v = _num(r, key)
        if v is not None:
            return v
    return None


def top_class_share(r: Mapping[str, Any]) -> float | None:
    """The share of the validation predictions that fall in the most predicted class:
    ``val_clean_top_share`` when the record has it; else, for records written before it
    existed, from the attacked predictions (``val_adv_confusion``'s column sums), which count
    only when the clean accuracy is at chance too (a constant network gives one class with and
    without attack; a merely non-robust one can send most attacked images to one class)."""
    share = _num(r, "val_clean_top_share")
    if share is not None:
        return share
    conf = r.get("val_adv_confusion")
    if not isinstance(conf, list) or not conf or not all(isinstance(row, list) for row in conf):
        return None
    cols = [sum(row[j] for row in conf if j < len(row)) for j in range(len(conf))]
    total = sum(cols)
    clean = _num(r, "val_clean_acc")
    if not total or clean is None or clean > chance_level(len(conf)):
        return None
    return max(cols) / total


def _at_epoch(records: Sequence[Mapping[str, Any]], num_classes: int, uniform_loss: float,
              plateau_epochs: int) -> list[Finding]:
    """The findings that hold at the last record of ``records`` (epochs 1..e in order)."""
    r = records[-1]
    e = int(r.get("epoch", len(records)))
    chance = chance_level(num_classes)
    out: list[Finding] = []
    loss = _num(r, "train_loss")
    if loss is not None and (not math.isfinite(loss) or loss > EXPLODE_FACTOR * uniform_loss):
        out.append(Finding("diverged", e, f"training loss {loss:.3g}, more than "
                           f"{EXPLODE_FACTOR:g}× the uniform prediction's {uniform_loss:.3f}"))
    accs = [accuracy_of(x) for x in records]
    learned = any(a is not None and a > learned_level(num_classes) for a in accs[:-1])
    if learned:
        share = top_class_share(r)
        tail = records[-UNIFORM_EPOCHS:]
        at_uniform = len(tail) == UNIFORM_EPOCHS and all(
            (lx := _num(x, "train_loss")) is not None
            and abs(lx - uniform_loss) <= UNIFORM_TOL * uniform_loss
            and (ax := accuracy_of(x)) is not None and ax <= chance for x in tail)
        if share is not None and share >= CONSTANT_SHARE:
            out.append(Finding("collapsed", e, f"{100 * share:.0f} % of the validation "
                               f"predictions are one class: the network gives a constant "
                               f"output"))
        elif at_uniform:
            out.append(Finding("collapsed", e, f"training loss {loss:.3f} at the uniform "
                               f"prediction's {uniform_loss:.3f} with chance accuracy for "
                               f"{UNIFORM_EPOCHS} epochs: the network gives a constant output"))
    if len(records) >= 2:
        prev, now = _num(records[-2], "train_adv_acc"), _num(r, "train_adv_acc")
        if prev is not None and now is not None and prev - now > ADV_DROP:
            out.append(Finding("adv_drop", e, f"accuracy on the training adversary's examples "
                               f"fell from {100 * prev:.1f} % to {100 * now:.1f} % in one "
                               f"epoch"))
    if len(records) == plateau_epochs and all(a is not None and a <= chance for a in accs):
        out.append(Finding("plateau", e, f"accuracy still at chance ({100 * (accs[-1] or 0):.1f}"
                           f" %, chance level {100 * chance:.0f} %) after {e} epochs"))
    return out


def scan(records: Sequence[Mapping[str, Any]], *, num_classes: int, uniform_loss: float,
         plateau_epochs: int) -> list[Finding]:
    """Every finding over a run's records (epochs 1..e in order), each kind once, at the first
    epoch it holds: what the loop reports epoch by epoch, and what ``spat study`` reads back
    from a finished run's ``metrics.jsonl``."""
    seen: set[str] = set()
    out: list[Finding] = []
    for i in range(len(records)):
        for f in _at_epoch(records[:i + 1], num_classes, uniform_loss, plateau_epochs):
            if f.kind not in seen:
                seen.add(f.kind)
                out.append(f)
    return out


def remedy(kind: str, cfg: Any) -> str:
    """What to try, for a finding of ``kind`` in a run configured by ``cfg`` (a resolved
    :class:`~spat.config.TrainConfig`)."""
    from spat.config import lr_remedy

    lr, why = lr_remedy(cfg)
    lower = f"lower --lr (try --lr {lr:g}: {why})"
    if kind == "plateau":
        head = getattr(cfg, "head", None)
        if head == "cosine" and getattr(cfg, "self_paced_ce", False):
            return (f"a smaller --cosine-scale (s = {cfg.cosine_scale:g}; the study trains at "
                    f"8), --self-paced-after 5, or {lower}")
        return lower
    return lower


#: How the one line names each kind.
WORDS = {"diverged": "training diverged", "collapsed": "training collapsed",
         "adv_drop": "training became unstable", "plateau": "training is stuck at chance"}


def guard_line(found: Sequence[Finding], cfg: Any) -> str:
    """The one line the loop prints for the findings of one epoch: the epoch, what was seen,
    and a remedy (the first finding's; a plateau's remedy names SPAT's knobs)."""
    what = "; ".join(f"{WORDS[f.kind]} ({f.detail})" for f in found)
    return f"epoch {found[0].epoch}: {what}; remedy: {remedy(found[0].kind, cfg)}"


def findings_for(cfg: Any, num_classes: int, records: Sequence[Mapping[str, Any]]
                 ) -> list[Finding]:
    """:func:`scan` with the thresholds of a run configured by ``cfg`` (a resolved
    :class:`~spat.config.TrainConfig`): its method's uniform-prediction loss and its
    ``plateau_epochs``."""
    from spat.methods import METHODS

    cls = METHODS.get(cfg.method)
    uniform = cls.uniform_loss(num_classes) if cls is not None else math.log(num_classes)
    return scan(records, num_classes=num_classes, uniform_loss=uniform,
                plateau_epochs=cfg.plateau_epochs)


def run_findings(run_dir: str | Path) -> list[Finding]:
    """The findings of a run directory, from its ``config.json``, ``data.json`` and
    ``metrics.jsonl`` (the records the loop scanned; for a run made before the guard existed,
    the same scan after the fact). ``[]`` when a file is missing or unreadable."""
    from spat.config import config_from_dict
    from spat.errors import SpatError
    from spat.utils.io import read_json_object_or_none, read_jsonl

    run = Path(run_dir)
    raw = read_json_object_or_none(run / "config.json")
    data = read_json_object_or_none(run / "data.json")
    k = (data or {}).get("num_classes")
    if raw is None or not isinstance(k, int) or isinstance(k, bool) or k < 2:
        return []
    try:
        cfg = config_from_dict(raw, source=str(run / "config.json"))
        records = [r for r in read_jsonl(run / "metrics.jsonl") if isinstance(r, dict)]
    except SpatError:
        return []
    return findings_for(cfg, k, records)
