"""``spat export RUN``: RobustBench's ``model_info`` JSON from a run's evaluation report, and the
run's model as a portable safetensors file.

RobustBench (Croce et al., arXiv 2010.09670) describes each leaderboard entry with a file
``model_info/<dataset>/<threat model>/<id>.json`` whose fields are (types as in their files):
``link``, ``name``, ``authors``, ``venue`` (strings), ``additional_data`` (bool),
``number_forward_passes`` (int), ``dataset`` (``"cifar10"``), ``architecture``
(``"WideResNet-34-10"``), ``eps`` (a string: ``"8/255"`` or ``"0.031"``), ``clean_acc``,
``reported``, ``autoattack_acc`` (percent strings with two decimals, ``"84.92"``) and optional
``footnote`` (string) and ``unreliable`` (bool). ``autoattack_acc`` is the accuracy under
*standard* AutoAttack (arXiv 2003.01690) on the *whole* test set, so an export refuses a report
that ran on a subset (``--n-examples``), without ``aa``, or with another AutoAttack version.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spat.errors import SpatError
from spat.utils.io import atomic_write_text
from spat.utils.reporting import percent
from spat.validation import loads_json

#: Output file names in the export folder.
MODEL_INFO_FILE = "model_info.json"
PORTABLE_FILE = "model.safetensors"
FORMATS = ("robustbench", "portable")

_WRN = re.compile(r"wrn(\d+)_(\d+)")
_ARCH = {"resnet18": "ResNet-18", "preact_resnet18": "PreActResNet-18", "small_cnn": "SmallCNN"}


def robustbench_architecture(name: str) -> str:
    """RobustBench's spelling of a spat model name: ``wrn34_10`` → ``WideResNet-34-10``."""
    m = _WRN.fullmatch(name)
    if m:
        return f"WideResNet-{m.group(1)}-{m.group(2)}"
    return _ARCH.get(name, name)


def format_eps(eps: float) -> str:
    """ε as RobustBench writes it: ``"8/255"`` when ε·255 is a whole number, else the number
    itself (``"0.031"``, ``"0.5"``)."""
    k = eps * 255
    if abs(k - round(k)) < 1e-6 and round(k) >= 1:
        return f"{round(k)}/255"
    return f"{eps:g}"


def check_full_standard_aa(report: Mapping[str, Any], source: str) -> dict[str, Any]:
    """The standard-AutoAttack entry of an evaluation report, or a one-line :class:`SpatError`
    saying why its numbers cannot go to RobustBench."""
    if report.get("schema") != "spat.eval/1":
        raise SpatError(f"{source} is not a spat evaluation report (schema "
                        f"{report.get('schema')!r})")
    entry = next((a for a in report.get("attacks", []) if a.get("key") == "aa"), None)
    if entry is None or report.get("autoattack_acc") is None:
        other = [a.get("name") for a in report.get("attacks", []) if a.get("kind") == "autoattack"]
        what = f"only {', '.join(map(str, other))}" if other else "no AutoAttack"
        raise SpatError(f"refusing to export: {source} has {what}; RobustBench's autoattack_acc "
                        f"needs standard AutoAttack (spat eval RUN --attacks aa)")
    version = (entry.get("settings") or {}).get("version")
    if version != "standard":
        raise SpatError(f"refusing to export: {source} ran AutoAttack version {version!r}, not "
                        f"'standard'")
    sub = report.get("subset") or {}
    n, of = report.get("n_examples"), sub.get("of")
    if sub.get("indices") is not None or n is None or n != of:
        raise SpatError(f"refusing to export: {source} evaluated {n} of {of} test examples; "
                        f"RobustBench's numbers need the whole test set (spat eval without "
                        f"--n-examples)")
    return dict(entry)


def check_reported(reported: float | None) -> None:
    """``--reported``: None or a fraction in [0, 1] (NaN and inf refused), else one line."""
    if reported is not None and not 0.0 <= reported <= 1.0:
        raise SpatError(f"--reported must be a fraction in [0, 1] (e.g. 0.5643 or 56.43/100), "
                        f"got {reported}")


def robustbench_model_info(
    report: Mapping[str, Any],
    *,
    name: str,
    authors: str = "",
    venue: str = "",
    link: str = "",
    additional_data: bool = False,
    reported: float | None = None,
    footnote: str | None = None,
    architecture: str | None = None,
    number_forward_passes: int = 1,
    source: str = "report",
) -> dict[str, Any]:
    """RobustBench's ``model_info`` dict for an evaluation report (``report.json``), in their
    key order and types. ``reported`` is the robust accuracy the paper reports, a fraction
    (default: this AutoAttack accuracy). Refuses a subset or a non-standard AutoAttack."""
    check_full_standard_aa(report, source)
    if number_forward_passes < 1:
        raise SpatError(f"number of forward passes must be >= 1, got {number_forward_passes}")
    check_reported(reported)
    aa = float(report["autoattack_acc"])
    info: dict[str, Any] = {
        "link": link,
        "name": name,
        "authors": authors,
        "additional_data": bool(additional_data),
        "number_forward_passes": int(number_forward_passes),
        "dataset": str(report.get("dataset")),
        "venue": venue,
        "architecture": architecture or robustbench_architecture(str(report.get("architecture"))),
        "eps": format_eps(float(report["eps"])),
        "clean_acc": percent(float(report["clean_acc"]), 2, symbol=False),
        "reported": percent(float(aa if reported is None else reported), 2, symbol=False),
        "autoattack_acc": percent(float(aa), 2, symbol=False),
    }
    if footnote:
        info["footnote"] = footnote
    return info


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_run` wrote."""

    model_file: Path
    model_info_file: Path | None
    model_info: dict[str, Any] | None


def export_run(
    run: str | os.PathLike[str],
    *,
    fmt: str = "robustbench",
    out: str | os.PathLike[str] | None = None,
    report: str | os.PathLike[str] | None = None,
    which: str = "best",
    name: str | None = None,
    authors: str = "",
    venue: str = "",
    link: str = "",
    additional_data: bool = False,
    reported: float | None = None,
    footnote: str | None = None,
) -> ExportResult:
    """Export a run to ``out`` (default ``RUN/export``).

    ``fmt="robustbench"``: ``model_info.json`` from the evaluation report (``report``, default
    ``RUN/eval/report.json``; it must hold standard AutoAttack on the whole test set) and the
    evaluated checkpoint as a portable ``model.safetensors``. ``fmt="portable"``: only the
    model file (of checkpoint ``which``). The portable file's metadata (architecture, head,
    cosine scale s, normalisation mean/std, input shape, class names, spat version) is enough
    for :func:`spat.load_model` to rebuild the model alone.
    """
    from spat.build import load_run
    from spat.evaluation.evaluate_run import run_dir_of
    from spat.models.external import save_portable

    if fmt not in FORMATS:
        raise SpatError(f"unknown export format {fmt!r} (valid: {', '.join(FORMATS)})")
    check_reported(reported)
    run_path = Path(run)
    doc: dict[str, Any] | None = None
    rep_path: Path | None = None
    if fmt == "robustbench":
        rep_path = Path(report) if report is not None else run_path / "eval" / "report.json"
        if not rep_path.is_file():
            raise SpatError(f"no evaluation report at {rep_path}; run spat eval {run} first "
                            f"(or give --report)")
        try:
            doc = loads_json(rep_path.read_text(encoding="utf-8"))
        except (ValueError, OSError) as e:  # not JSON, not UTF-8, nested too deeply
            raise SpatError(f"{rep_path} is not readable JSON ({type(e).__name__})") from None
        if not isinstance(doc, dict):
            raise SpatError(f"{rep_path} is not a spat evaluation report")
        from spat.validation import check_eval_report

        check_eval_report(doc, str(rep_path))  # types and ranges, one line naming the field
        check_full_standard_aa(doc, str(rep_path))
        loaded = _run_of_report(doc, rep_path, run_path)
    else:
        loaded = load_run(run_path, which=which, device="cpu")
    model, cfg, info = loaded.model, loaded.config, loaded.info
    run_dir = run_dir_of(loaded.checkpoint)
    out_dir = Path(out) if out is not None else run_dir / "export"
    if out_dir.exists() and not out_dir.is_dir():
        raise SpatError(f"--out {out_dir} exists and is not a folder")
    # every argument is checked (model_info built) before the first file is written
    mi = None if doc is None else robustbench_model_info(
        doc, name=name or run_dir.name, authors=authors, venue=venue, link=link,
        additional_data=additional_data, reported=reported, footnote=footnote,
        source=str(rep_path),
    )
    model_file = save_portable(
        model, out_dir / PORTABLE_FILE, architecture=cfg.model,
        image_size=(int(info.height), int(info.width)), class_names=list(info.class_names),
        dataset=cfg.dataset,
        extra={"method": cfg.method, "training_eps": cfg.eps, "training_norm": cfg.norm,
               "run": run_dir.name, "checkpoint": loaded.checkpoint.name},
    )
    if mi is None:
        return ExportResult(model_file, None, None)
    mi_file = out_dir / MODEL_INFO_FILE
    atomic_write_text(mi_file, json.dumps(mi, indent=2, ensure_ascii=False) + "\n")
    return ExportResult(model_file, mi_file, mi)


def _run_of_report(doc: Mapping[str, Any], rep_path: Path, run: Path) -> Any:
    """The checkpoint of ``run`` that the evaluation report ``doc`` (read from ``rep_path``)
    evaluated, loaded; a report of another run, or of a model that is not a spat run, is a
    one-line :class:`SpatError` naming both (its numbers would be exported with this run's
    model, or with the other run's).

    The report belongs to ``run`` when its recorded run directory is ``run``'s. A run that was
    moved or copied keeps the old path in its own ``eval/report.json``: a report that lies
    inside ``run`` and records the same training config is accepted too, and the checkpoint of
    the recorded name is read from ``run``."""
    from spat import checkpoint as ckpt
    from spat.build import load_run
    from spat.evaluation.evaluate_run import run_dir_of

    own = run_dir_of(ckpt.resolve(run)).resolve()
    recorded, evaluated = doc.get("run_dir"), doc.get("checkpoint")
    if not recorded or not evaluated:
        raise SpatError(f"refusing to export: {rep_path} is the evaluation of "
                        f"{doc.get('model') or 'a model'}, not of a spat run; export {run} with "
                        f"its own report (spat eval {run})")
    if Path(str(recorded)).resolve() == own:
        folder, moved = Path(str(evaluated)), False
    elif own in rep_path.resolve().parents:  # the run's own report, the run moved or copied
        folder, moved = own / "checkpoints" / Path(str(evaluated)).name, True
    else:
        raise _other_run(rep_path, recorded, run, own)
    if not folder.is_dir():
        raise SpatError(f"refusing to export: the checkpoint {rep_path} evaluated ({folder}) is "
                        f"gone; evaluate the run again (spat eval {run})")
    loaded = load_run(folder, device="cpu")
    if moved and not _same_training(doc.get("config"), loaded.config.to_dict()):
        raise _other_run(rep_path, recorded, run, own)
    return loaded


def _other_run(rep_path: Path, recorded: object, run: Path, own: Path) -> SpatError:
    return SpatError(f"refusing to export: {rep_path} is the evaluation of run {recorded}, not "
                     f"of {run} ({own}); give that run's own report, or export {recorded}")


def _same_training(recorded: Any, config: dict[str, Any]) -> bool:
    """The report's training config is the run's, once both are written as JSON (tuples as
    lists) and without ``data_dir`` (``spat eval --data-dir`` records the one it read)."""
    if not isinstance(recorded, dict):
        return False

    def text(d: Mapping[str, Any]) -> str:
        return json.dumps({k: v for k, v in d.items() if k != "data_dir"}, sort_keys=True)
    return text(recorded) == text(config)
