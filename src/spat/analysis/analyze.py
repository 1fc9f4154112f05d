"""``spat analyze``: the hard-class-pair analysis of one training run.

:func:`collect` gathers everything (predictions clean and under each attack on the test split,
the confusion matrices, class similarities, the per-epoch table) into a :class:`RunAnalysis`;
:func:`write_analysis` writes its numbers (JSON, CSV), plots (PNG + PDF) and ``report.md``.

Predictions come from ``RUN/eval/predictions.npz`` (written by ``spat eval``; every attack in
it is used) when that exists; otherwise clean and PGD-20 predictions at the run's ε are computed
here on the test split and cached as ``OUT/predictions.npz`` (with ``predictions.json`` saying
what they are), so a second analysis does not attack again.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spat.analysis import plots
from spat.analysis.similarity import class_mean_features, feature_similarity, head_similarity
from spat.analysis.stats import (
    Concentration,
    MantelResult,
    RankCorrelation,
    class_totals,
    concentration,
    directed_flow_matrix,
    directed_flows,
    flow_summary,
    honest_concentration,
    mantel_spearman,
    offdiag_spearman,
    per_class_accuracy,
    symmetric_flow_matrix,
    symmetric_flows,
)
from spat.analysis.training import TRAINING_COLUMNS, over_training, read_metrics
from spat.data.subset import SUBSET_RULE, subset_split
from spat.errors import SpatError
from spat.evaluation.attacks import AA_NAMES, resolve_attack_name
from spat.evaluation.core import Predictions
from spat.utils.io import atomic_write_text, json_safe, nan_to_none
from spat.utils.progress import counting_bar
from spat.validation import one_line

Log = Callable[[str], None]

#: The attack computed here when no ``RUN/eval/predictions.npz`` exists.
DEFAULT_STEPS = 20
#: Methods' display names (runs are labelled by method).
METHOD_LABELS = {"pgd_at": "PGD-AT", "spat": "SPAT", "trades": "TRADES", "mart": "MART",
                 "standard": "Standard"}
#: Similarity matrices compared with the flows (keys of ``RunAnalysis.similarities``).
HEAD_SIM = "classifier weight rows"
FEATURE_SIM = "class-mean features (clean test)"


def method_label(method: str) -> str:
    """``"pgd_at"`` → ``"PGD-AT"``; unknown names are returned unchanged."""
    return METHOD_LABELS.get(method, method)


def slug(text: str) -> str:
    """A file-name-safe lower-case form of an attack name (``"PGD-20"`` → ``"pgd-20"``)."""
    return re.sub(r"[^a-z0-9.+-]+", "_", text.lower()).strip("_") or "attack"


@dataclass
class RunAnalysis:
    """Everything the report of one run shows.

    ``confusions`` maps ``"clean"`` and every attack name to its (K, K) count matrix;
    ``primary`` is the attack whose flows are ranked, plotted and correlated with the
    similarities; ``similarities`` maps a name (:data:`HEAD_SIM`, :data:`FEATURE_SIM`) to a
    (K, K) cosine matrix; ``correlations`` maps ``"<similarity> / directed"`` and
    ``"<similarity> / symmetric"`` to a :class:`RankCorrelation`; ``training`` holds the rows of
    :func:`~spat.analysis.training.over_training`.
    """

    run_dir: Path
    label: str
    config: dict[str, Any]
    names: list[str]
    predictions: Predictions
    prediction_source: str
    primary: str
    confusions: dict[str, np.ndarray]
    similarities: dict[str, np.ndarray] = field(default_factory=dict)
    correlations: dict[str, RankCorrelation] = field(default_factory=dict)
    mantel: dict[str, MantelResult] = field(default_factory=dict)  # same keys, permutation null
    training: list[dict[str, Any]] = field(default_factory=list)
    eval_report: dict[str, Any] | None = None
    checkpoint: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def attacks(self) -> list[str]:
        return [k for k in self.confusions if k != "clean"]

    def concentration_of(self, attack: str | None = None) -> Concentration:
        """The target concentration under ``attack`` (default: the primary attack)."""
        return concentration(self.confusions[attack or self.primary])

    def per_class(self) -> list[dict[str, Any]]:
        """One row per class: examples, clean and per-attack accuracy, worst case over the
        attacks, and the primary attack's errors, top target and concentration."""
        labels = self.predictions.labels
        worst = self.predictions.robust_all()
        conc = self.concentration_of()
        hc = honest_concentration(self.confusions[self.primary])
        acc = {k: per_class_accuracy(m) for k, m in self.confusions.items()}
        rows = []
        for i, name in enumerate(self.names):
            n = int((labels == i).sum())
            row: dict[str, Any] = {"class": i, "name": name, "examples": n}
            for k in self.confusions:
                row[f"{k}_acc"] = nan_to_none(acc[k][i])
            if len(self.attacks) > 1:
                row["worst_case_acc"] = (nan_to_none(float(worst[labels == i].float().mean()))
                                         if n else None)
            t = int(conc.top_target[i])
            row.update({
                f"{self.primary}_errors": int(conc.errors[i]),
                "top_target": self.names[t] if t >= 0 else None,
                "top_target_share_of_errors": nan_to_none(conc.top_share[i]),
                "normalized_entropy": nan_to_none(conc.normalized_entropy[i]),
                "null_top_share": nan_to_none(hc.null_top_share[i]),
                "excess_top_share": nan_to_none(hc.excess_top_share[i]),
                "null_normalized_entropy": nan_to_none(hc.null_normalized_entropy[i]),
                "uniformity_p": nan_to_none(hc.p_value[i]),
                "few_errors": bool(hc.few_errors[i]),
            })
            rows.append(row)
        return rows

    def summary(self) -> dict[str, Any]:
        """The headline numbers (what ``spat compare`` tabulates)."""
        accs = {k: self.predictions.accuracy(None if k == "clean" else k)
                for k in self.confusions}
        prim_pc = per_class_accuracy(self.confusions[self.primary])
        clean_pc = per_class_accuracy(self.confusions["clean"])
        fs = flow_summary(self.confusions[self.primary], self.names)
        worst_i = int(np.nanargmin(prim_pc)) if np.any(~np.isnan(prim_pc)) else -1
        out: dict[str, Any] = {
            "label": self.label,
            "run_dir": str(self.run_dir),
            "checkpoint": self.checkpoint,
            "method": self.config.get("method"),
            "dataset": self.config.get("dataset"),
            "model": self.config.get("model"),
            "head": self.config.get("head"),
            "eps": self.config.get("eps"),
            "examples": len(self.predictions),
            "prediction_source": self.prediction_source,
            "primary_attack": self.primary,
            "accuracy": {k: nan_to_none(v) for k, v in accs.items()},
            "worst_case_acc": (nan_to_none(float(self.predictions.robust_all().float().mean()))
                               if len(self.attacks) > 1 else None),
            "autoattack_acc": autoattack_accuracy(self.eval_report, self.predictions),
            "worst_class_clean_acc": nan_to_none(float(np.nanmin(clean_pc))),
            "worst_class_robust_acc": (nan_to_none(float(prim_pc[worst_i])) if worst_i >= 0
                                       else None),
            "worst_class": self.names[worst_i] if worst_i >= 0 else None,
            **{k: v for k, v in fs.items() if k != "accuracy"},
            "correlations": {k: {**_corr_dict(v), "mantel_p_value": (
                nan_to_none(self.mantel[k].p_value) if k in self.mantel else None)}
                for k, v in self.correlations.items()},
        }
        hc = honest_concentration(self.confusions[self.primary])
        out.update({"null_top_share": nan_to_none(hc.mean_null_top_share),
                    "excess_top_share": nan_to_none(hc.mean_excess_top_share),
                    "null_normalized_entropy": nan_to_none(hc.mean_null_normalized_entropy),
                    "entropy_deficit": nan_to_none(hc.mean_entropy_deficit),
                    "nonuniform_classes": hc.n_significant, "tested_classes": hc.n_tested,
                    "few_error_classes": int(hc.few_errors.sum())})
        return out


def _corr_dict(c: RankCorrelation) -> dict[str, Any]:
    return {"rho": nan_to_none(c.rho), "p_value": nan_to_none(c.p_value), "n_pairs": c.n_pairs}


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


def autoattack_accuracy(report: dict[str, Any] | None, preds: Predictions | None = None
                        ) -> float | None:
    """Standard AutoAttack's robust accuracy, if known: the attack named exactly ``AutoAttack``
    in the predictions, else the eval report's ``autoattack_acc`` (``spat eval``'s
    ``report.json``, validated by :func:`~spat.validation.check_eval_report`), else the entry of
    its ``attacks`` list named ``AutoAttack``. The reduced ``AutoAttack-fast`` never counts."""
    if preds is not None and "AutoAttack" in preds.adversarial:
        return nan_to_none(preds.accuracy("AutoAttack"))
    if not report:
        return None
    if "autoattack_acc" in report:
        v = report["autoattack_acc"]
    else:
        v = next((a.get("accuracy") for a in report.get("attacks") or ()
                  if isinstance(a, dict) and a.get("name") == AA_NAMES["standard"]), None)
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


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
        return _load_predictions(eval_npz), str(eval_npz)
    cache = out_dir / "predictions.npz"
    meta_path = out_dir / "predictions.json"
    if test_split is None:
        raise SpatError(f"no {eval_npz} and the test data could not be loaded to compute "
                        "predictions (pass --data-dir, or run spat eval first)")
    n = len(test_split) if limit is None else min(limit, len(test_split))
    meta = _prediction_meta(checkpoint, float(cfg.eps), cfg.norm, steps, limit, n)
    if cache.is_file() and meta_path.is_file() and not recompute:
        try:
            if json.loads(meta_path.read_text()) == meta:
                log(f"no {eval_npz}: using the cached predictions {cache}")
                return _load_predictions(cache), str(cache)
        except json.JSONDecodeError:
            pass
    from spat.attacks import pgd
    from spat.evaluation.core import predict_under_attacks
    from spat.utils.rng import final_test_seed  # the seed of the run's final test

    log(f"no {eval_npz}: computing clean and PGD-{steps} (ε={cfg.eps:.4g}, "
        f"{cfg.norm}) predictions on {n} test examples; cached as {cache}")
    split = subset_split(test_split, limit)
    gen = torch.Generator(device=device).manual_seed(final_test_seed(int(cfg.seed)))
    with counting_bar(f"  PGD-{steps}", len(split), stderr=True, transient=True) as on_batch:
        preds = predict_under_attacks(model, split, [pgd(float(cfg.eps), steps=steps,
                                                         norm=cfg.norm)],
                                      batch_size=batch_size, device=device, generator=gen,
                                      on_batch=on_batch)
    out_dir.mkdir(parents=True, exist_ok=True)
    preds.save(cache)
    atomic_write_text(meta_path, json.dumps(meta, indent=2))
    return preds, str(cache)


def _load_predictions(path: Path) -> Predictions:
    from spat.validation import check_prediction_arrays

    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # not a zip, bad CRC, truncated stream, pickled arrays, ...
        raise SpatError(f"cannot read predictions {path} ({type(e).__name__}: "
                        f"{one_line(e, 160)})") from None
    check_prediction_arrays(arrays, str(path))
    return Predictions.load(path)


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


# ----------------------------------------------------------------------------- collect
def collect(
    run_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
    *,
    which: str = "best",
    attack: str | None = None,
    limit: int | None = None,
    batch_size: int = 512,
    device: str = "cpu",
    data_dir: str | None = None,
    features: bool = True,
    recompute: bool = False,
    steps: int = DEFAULT_STEPS,
    label: str | None = None,
    log: Log = print,
) -> RunAnalysis:
    """Load the run, get its predictions, and compute every statistic (no files but the
    prediction cache are written). ``out_dir`` defaults to ``RUN/analysis``."""
    import dataclasses

    from spat.runs import load_data, load_run
    from spat.utils.env import resolve_device

    run = Path(run_dir)
    if not (run / "config.json").is_file() and not (run / "checkpoints").is_dir():
        raise SpatError(f"{run} is not a run directory (no config.json or checkpoints/)")
    out = Path(out_dir) if out_dir is not None else run / "analysis"
    if limit is not None and limit < 1:
        raise SpatError(f"--max-examples must be >= 1, got {limit}")
    if steps < 1:
        raise SpatError(f"--steps must be >= 1, got {steps}")
    dev = resolve_device(device)
    try:
        loaded = load_run(run, which=which, device=dev)
    except FileNotFoundError as e:
        raise SpatError(f"cannot load {run}: {e}") from None
    from spat.analysis.preflight import check_attack, predicted_attacks

    # an unknown --attack is refused before the predictions are computed and cached
    check_attack(attack, predicted_attacks(run, recompute=recompute, steps=steps), str(run))
    model, cfg, info = loaded.model, loaded.config, loaded.info
    names = [str(n) for n in info.class_names]
    k = len(names)
    if data_dir is not None:
        cfg = dataclasses.replace(cfg, data_dir=data_dir)
    test = None
    try:
        test = load_data(cfg).test
    except (SpatError, OSError) as e:
        log(f"warning: test data not available ({e}); class-mean features are skipped")
    checkpoint = str(loaded.checkpoint)
    preds, source = obtain_predictions(run, out, model, cfg, test, checkpoint=checkpoint,
                                       limit=limit, batch_size=batch_size, device=dev,
                                       recompute=recompute, log=log, steps=steps)
    if len(preds) == 0:
        raise SpatError(f"the predictions {source} are empty")
    if max(int(t.max()) for t in (preds.labels, preds.clean, *preds.adversarial.values())) >= k:
        raise SpatError(f"the predictions {source} have class indices ≥ {k} (the run has {k} "
                        "classes)")
    confusions = {"clean": preds.confusion(None, k).numpy()}
    for name in preds.adversarial:
        confusions[name] = preds.confusion(name, k).numpy()
    primary = choose_attack(list(preds.adversarial), attack)
    ra = RunAnalysis(run_dir=run, label=label or method_label(cfg.method),
                     config=cfg.to_dict(), names=names, predictions=preds,
                     prediction_source=source, primary=primary, confusions=confusions,
                     eval_report=read_eval_report(run), checkpoint=checkpoint)
    ra.similarities[HEAD_SIM] = head_similarity(model)
    if features and test is not None:
        split = subset_split(test, limit)
        means = class_mean_features(model, split, k, batch_size=batch_size, device=dev)
        ra.similarities[FEATURE_SIM] = feature_similarity(means)
    conf = confusions[primary]
    for sname, sim in ra.similarities.items():
        ra.correlations[f"{sname} / directed"] = offdiag_spearman(
            sim, directed_flow_matrix(conf, "class"))
        ra.correlations[f"{sname} / symmetric"] = offdiag_spearman(
            sim, symmetric_flow_matrix(conf), symmetric=True)
        ra.mantel[f"{sname} / directed"] = mantel_spearman(sim, directed_flow_matrix(conf, "class"))
        ra.mantel[f"{sname} / symmetric"] = mantel_spearman(sim, symmetric_flow_matrix(conf),
                                                            symmetric=True)
    ra.training = over_training(read_metrics(run), names)
    return ra


# ----------------------------------------------------------------------------- writing
def _csv_text(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        w.writerow(["" if v is None else _fmt_csv(v) for v in r])
    return buf.getvalue()


def _fmt_csv(v: Any) -> Any:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return v


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    """Write a CSV atomically."""
    atomic_write_text(path, _csv_text(header, rows))
    return path


def dict_rows_csv(path: Path, rows: Sequence[dict[str, Any]],
                  columns: Sequence[str] | None = None) -> Path:
    """Write dict rows as a CSV (columns: ``columns`` or the keys of the first row)."""
    cols = list(columns) if columns is not None else (list(rows[0]) if rows else [])
    return write_csv(path, cols, [[r.get(c) for c in cols] for r in rows])


def write_json(path: Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON (NaN → null) atomically."""
    atomic_write_text(path, json.dumps(json_safe(obj), indent=2, ensure_ascii=False) + "\n")
    return path


def _matrix_csv(path: Path, m: np.ndarray, names: Sequence[str], corner: str) -> Path:
    return write_csv(path, [corner, *names],
                     [[names[i], *[_fmt_int(v) for v in m[i]]] for i in range(len(names))])


def _fmt_int(v: float) -> Any:
    return int(v) if float(v).is_integer() else float(v)


def write_analysis(ra: RunAnalysis, out_dir: str | os.PathLike[str] | None = None,
                   log: Log = print) -> dict[str, Path]:
    """Write the numbers, plots and ``report.md`` of ``ra``; returns name → path."""
    out = Path(out_dir) if out_dir is not None else ra.run_dir / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    names, k, primary = ra.names, ra.num_classes, ra.primary
    files: dict[str, Path] = {}
    # numbers -----------------------------------------------------------------------------
    for key, m in ra.confusions.items():
        files[f"confusion_{slug(key)}.csv"] = _matrix_csv(
            out / f"confusion_{slug(key)}.csv", m, names, "true\\predicted")
    pair_rows, sym_rows = [], []
    for key in ra.attacks:
        for rank, f in enumerate(directed_flows(ra.confusions[key]), 1):
            pair_rows.append([key, rank, f.label(names), names[f.source], names[f.target],
                              f.count, f.share_of_class, f.share_of_errors])
        for rank, s in enumerate(symmetric_flows(ra.confusions[key]), 1):
            sym_rows.append([key, rank, s.label(names), names[s.a], names[s.b], s.count,
                             s.a_to_b, s.b_to_a, s.share_of_class, s.share_of_errors,
                             s.share_of_all_errors])
    files["hard_pairs.csv"] = write_csv(
        out / "hard_pairs.csv", ["attack", "rank", "pair", "true", "predicted", "count",
                                 "share_of_class", "share_of_errors"], pair_rows)
    files["hard_pairs_symmetric.csv"] = write_csv(
        out / "hard_pairs_symmetric.csv",
        ["attack", "rank", "pair", "class_a", "class_b", "count", "a_to_b", "b_to_a",
         "share_of_class", "share_of_errors", "share_of_all_errors"], sym_rows)
    per_class = ra.per_class()
    files["per_class.csv"] = dict_rows_csv(out / "per_class.csv", per_class)
    for sname, sim in ra.similarities.items():
        fname = "similarity_head.csv" if sname == HEAD_SIM else "similarity_features.csv"
        files[fname] = _matrix_csv(out / fname, np.round(sim, 6), names, "cosine")
    if ra.training:
        files["over_training.csv"] = dict_rows_csv(out / "over_training.csv", ra.training,
                                                   TRAINING_COLUMNS)
    summary = ra.summary()
    top = 20
    analysis = {
        "summary": summary,
        "class_names": names,
        "attacks": {
            key: {
                **flow_summary(ra.confusions[key], names),
                "top_pairs": [f.to_dict(names) for f in directed_flows(ra.confusions[key])[:top]],
                "top_symmetric_pairs": [s.to_dict(names) for s in
                                        symmetric_flows(ra.confusions[key])[:top]],
                "concentration": _conc_dict(concentration(ra.confusions[key]), names),
                "confusion": ra.confusions[key].astype(int).tolist(),
            } for key in ra.attacks
        },
        "clean_confusion": ra.confusions["clean"].astype(int).tolist(),
        "per_class": per_class,
        "similarity": {k2: np.round(v, 6) for k2, v in ra.similarities.items()},
        "over_training": ra.training,
    }
    files["analysis.json"] = write_json(out / "analysis.json", analysis)
    # plots (each a PNG and a PDF) ------------------------------------------------------------
    who = plots.subject(ra.label, ra.config.get("model"), ra.config.get("dataset"),
                        len(ra.predictions))
    n_class = class_totals(ra.confusions["clean"])
    for key in ra.attacks:
        files[f"confusion_{slug(key)}.png"] = plots.plot_confusion(
            ra.confusions[key], names, out / f"confusion_{slug(key)}.png", attack=key,
            title=f"{who}: adversarial confusion under {key}")
    files["hard_pairs.png"] = plots.plot_hard_pairs(
        directed_flows(ra.confusions[primary]), names, out / "hard_pairs.png", attack=primary,
        title=f"{who}\ntop hard class pairs (true→predicted) under {primary}")
    accs = {("clean" if key == "clean" else key): per_class_accuracy(m)
            for key, m in ra.confusions.items()}
    files["per_class_accuracy.png"] = plots.plot_per_class_accuracy(
        accs, names, out / "per_class_accuracy.png", n=n_class,
        title=f"{who}: per-class test accuracy")
    if ra.training:
        files["training.png"] = plots.plot_training(
            ra.training, out / "training.png", num_classes=k,
            title=f"{plots.subject(ra.label, ra.config.get('model'), ra.config.get('dataset'))}"
                  ": training (validation split)")
    if ra.similarities:
        corr = {s: ra.correlations[f"{s} / directed"] for s in ra.similarities}
        files["similarity_flow.png"] = plots.plot_similarity_flow(
            ra.similarities, ra.confusions[primary], names, out / "similarity_flow.png",
            attack=primary, correlations=corr,
            title=f"{who}: class similarity vs adversarial flow under {primary}")
    for name in [f for f in files if f.endswith(".png")]:
        files[name[:-4] + ".pdf"] = plots.output_paths(files[name])["pdf"]
    files["report.md"] = out / "report.md"
    atomic_write_text(out / "report.md", render_report(ra, files, per_class))
    for name in OPTIONAL_OUTPUTS:  # a stale one from an earlier analysis would mislead
        if name not in files:
            (out / name).unlink(missing_ok=True)
    return files


#: Outputs that are not always written (no features, no metrics.jsonl).
OPTIONAL_OUTPUTS = ("similarity_head.csv", "similarity_features.csv", "over_training.csv",
                    "training.png", "similarity_flow.png", "training.pdf", "similarity_flow.pdf")


def _conc_dict(c: Concentration, names: Sequence[str]) -> dict[str, Any]:
    return {
        "top_target": [names[t] if t >= 0 else None for t in c.top_target],
        "top_share": c.top_share, "normalized_entropy": c.normalized_entropy,
        "errors": c.errors.astype(int), "mean_top_share": c.mean_top_share,
        "mean_normalized_entropy": c.mean_normalized_entropy,
        "uniform_top_share": c.uniform_top_share, "uniform_normalized_entropy": c.UNIFORM,
    }


def pct(v: float | None, digits: int = 1) -> str:
    """``0.4123`` → ``"41.2%"``; None/NaN → ``"–"``."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{100 * v:.{digits}f}%"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def render_report(ra: RunAnalysis, files: dict[str, Path], per_class: Sequence[dict[str, Any]]
                  ) -> str:
    """The Markdown report of one run (images referenced relative to the report)."""
    s = ra.summary()
    cfg = ra.config
    prim = ra.primary
    conc = ra.concentration_of()
    k = ra.num_classes
    lines = [
        f"# Hard-class-pair analysis: {ra.label} on {cfg.get('dataset')}",
        "",
        f"Run `{ra.run_dir}` — method `{cfg.get('method')}`, model `{cfg.get('model')}` "
        f"({cfg.get('head')} head), ε = {cfg.get('eps'):.4g} ({cfg.get('norm')}); checkpoint "
        f"`{ra.checkpoint}`. Predictions: `{ra.prediction_source}` ({len(ra.predictions)} test "
        f"examples). Flows below are under **{prim}**.",
        "",
        "## Headline numbers",
        "",
    ]
    rows = [[("clean" if key == "clean" else key), pct(v)] for key, v in s["accuracy"].items()]
    if s.get("worst_case_acc") is not None:
        rows.append(["worst case over the attacks", pct(s["worst_case_acc"])])
    if s.get("autoattack_acc") is not None:
        rows.append(["AutoAttack (eval report)", pct(s["autoattack_acc"])])
    rows.append([f"worst class under {prim}", f"{s['worst_class']}: "
                 f"{pct(s['worst_class_robust_acc'])}"])
    tp, ts = s.get("top_pair"), s.get("top_symmetric_pair")
    if tp:
        rows.append(["hardest pair (true→predicted)",
                     f"{tp['pair']}: {pct(tp['share_of_class'])} of all {tp['source_name']} "
                     f"examples, {pct(tp['share_of_errors'])} of its misclassified ones"])
    if ts:
        rows.append(["hardest symmetric pair", f"{ts['pair']}: "
                     f"{pct(ts['share_of_all_errors'])} of all misclassified examples"])
    rows.append(["mean top-target share (over classes)",
                 f"{pct(s['mean_top_share'])} (null for these error counts: "
                 f"{pct(s['null_top_share'])}; excess over it, classes with ≥ 5 errors: "
                 f"{pct(s['excess_top_share'])})"])
    rows.append(["mean normalised entropy of wrong classes",
                 f"{_f3(s['mean_normalized_entropy'])} (null for these error counts: "
                 f"{_f3(s['null_normalized_entropy'])}; uniform 1, one target 0)"])
    rows.append(["classes whose errors are not uniform (G-test p < 0.05)",
                 f"{s['nonuniform_classes']} of {s['tested_classes']} with ≥ 5 errors "
                 f"({s['few_error_classes']} classes with fewer are marked *)"])
    lines += [_md_table(["measure", "value"], rows), ""]

    def img(name: str, alt: str) -> list[str]:
        return [f"![{alt}]({name})", ""] if name in files else []

    lines += ["## Adversarial confusion", "",
              "Left: each row is the distribution of the predicted class for the test examples "
              "of the true class (diagonal = accuracy). Right: only the misclassified examples "
              "of each class, diagonal masked (the number of correct predictions in grey) — a "
              "dark cell means that most of that row's errors land on that column. The cells "
              "hold counts and `n=` at the right end of a row is its total, so a dark cell in "
              "a row with n=1 is one example. Every figure is also written as a PDF next to "
              "its PNG.", ""]
    for key in ra.attacks:
        lines += img(f"confusion_{slug(key)}.png", f"confusion under {key}")
    lines += ["## Hard class pairs", ""]
    lines += img("hard_pairs.png", "hard class pairs")
    top_rows = [[i, f.label(ra.names), f.count, pct(f.share_of_class), pct(f.share_of_errors)]
                for i, f in enumerate(directed_flows(ra.confusions[prim])[:10], 1)]
    lines += [_md_table(["rank", "true→predicted", "count", "share of the class",
                         "share of its errors"], top_rows), ""]
    sym_rows = [[i, p.label(ra.names), p.count, f"{p.a_to_b} / {p.b_to_a}",
                 pct(p.share_of_class), pct(p.share_of_all_errors)]
                for i, p in enumerate(symmetric_flows(ra.confusions[prim])[:10], 1)]
    lines += ["Symmetric pairs (both directions combined):", "",
              _md_table(["rank", "pair", "count", "a→b / b→a", "share of both classes",
                         "share of all errors"], sym_rows), ""]
    lines += ["## Per class", "",
              f"Target concentration under {prim}: the top wrong class's share of the class's "
              f"misclassified examples (uniform over the {k - 1} wrong classes would be "
              f"{pct(conc.uniform_top_share)}) and the normalised entropy of the wrong-class "
              "distribution (1 = uniform, 0 = a single target; – = no errors), each beside "
              "its null: the expectation if the same number of errors went to uniformly random "
              "wrong classes (one error always gives a 100 % top share). p: G-test of "
              "uniformity (Monte-Carlo exact). * = fewer than 5 errors: concentration there "
              "is mostly chance.", ""]
    lines += img("per_class_accuracy.png", "per-class accuracy")
    acc_keys = list(ra.confusions)
    pc_rows = [[r["name"], r["examples"], *[pct(r[f"{a}_acc"]) for a in acc_keys],
                r["top_target"] or "–", pct(r["top_target_share_of_errors"])
                + ("*" if r["few_errors"] else ""), pct(r["null_top_share"]),
                _f3(r["normalized_entropy"]), _f3(r["null_normalized_entropy"]),
                "–" if r["uniformity_p"] is None else f"{r['uniformity_p']:.2g}"]
               for r in per_class]
    lines += [_md_table(["class", "n", *[f"{a} acc" for a in acc_keys], f"top target ({prim})",
                         "its share of errors", "null", "norm. entropy", "null", "p"],
                        pc_rows), ""]
    lines += ["## Does class similarity predict the flow?", "",
              "Spearman rank correlation between the cosine similarity of classes i and j and "
              f"the share of class i predicted as j under {prim} (directed: all K(K−1) ordered "
              "pairs; symmetric: K(K−1)/2 pairs, both directions combined).", ""]
    lines += img("similarity_flow.png", "similarity vs flow")
    corr_rows = [[name, _f3(c.rho), f"{c.p_value:.2g}" if not math.isnan(c.p_value) else "–",
                  _p(ra.mantel.get(name)), c.n_pairs] for name, c in ra.correlations.items()]
    lines += ["The Spearman p-value treats the pairs as independent (they are not: pairs share "
              "classes, and many flows are tied zeros); the Mantel p-value compares ρ with "
              "relabelled classes (999 permutations of one matrix's rows and columns together) "
              "and is the one to trust.", "",
              _md_table(["similarity / flow", "ρ", "Spearman p", "Mantel p", "pairs"],
                        corr_rows), ""]
    if ra.training:
        lines += ["## Over training", "",
                  "From `metrics.jsonl`: the validation split under the per-epoch validation "
                  "attack (no extra computation).", ""]
        lines += img("training.png", "training curves")
        tr_rows = [[r["epoch"], _f3(r.get("train_loss")), pct(r.get("val_clean_acc")),
                    pct(r.get("val_robust_acc")), r.get("top_pair") or "–",
                    pct(r.get("top_pair_share_of_errors")), pct(r.get("mean_top_share")),
                    _f3(r.get("mean_normalized_entropy"))] for r in ra.training]
        lines += [_md_table(["epoch", "train loss", "val clean", "val robust", "top pair",
                             "its share of errors", "mean top share", "mean norm. entropy"],
                            tr_rows), ""]
    lines += ["## Files", "", *[f"- `{n}`" for n in sorted(files)], ""]
    return "\n".join(lines)


def _p(m: MantelResult | None) -> str:
    return "–" if m is None or math.isnan(m.p_value) else f"{m.p_value:.2g}"


def _f3(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.3f}"
