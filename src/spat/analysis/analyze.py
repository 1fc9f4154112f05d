"""``spat analyze``: the hard-class-pair analysis of one training run.

:func:`collect` gathers everything (predictions clean and under each attack on the test split,
the confusion matrices, class similarities, the per-epoch table) into a
:class:`~spat.analysis.record.RunAnalysis`; :func:`write_analysis` writes its numbers (JSON,
CSV: :mod:`spat.analysis.writers`), plots (PNG + PDF: :mod:`spat.analysis.plots`) and
``report.md`` (:mod:`spat.analysis.markdown`).

Where the predictions come from (``spat eval``'s, or computed here and cached) is
:mod:`spat.analysis.predictions`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from spat.analysis import plots
from spat.analysis.markdown import render_report
from spat.analysis.over_epochs import over_training, read_metrics
from spat.analysis.predictions import (
    DEFAULT_STEPS,
    choose_attack,
    obtain_predictions,
    read_eval_report,
)
from spat.analysis.record import FEATURE_SIM, HEAD_SIM, RunAnalysis, method_label
from spat.analysis.similarity import class_mean_features, feature_similarity, head_similarity
from spat.analysis.stats import (
    class_totals,
    directed_flow_matrix,
    directed_flows,
    mantel_spearman,
    offdiag_spearman,
    per_class_accuracy,
    symmetric_flow_matrix,
)
from spat.analysis.writers import slug, write_numbers
from spat.data.subset import subset_split
from spat.errors import SpatError
from spat.utils.io import atomic_write_text

Log = Callable[[str], None]

#: Outputs that are not always written (no features, no metrics.jsonl).
OPTIONAL_OUTPUTS = ("similarity_head.csv", "similarity_features.csv", "over_training.csv",
                    "training.png", "similarity_flow.png", "training.pdf", "similarity_flow.pdf")


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

    from spat.build import load_data, load_run
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



def write_analysis(ra: RunAnalysis, out_dir: str | os.PathLike[str] | None = None,
                   log: Log = print) -> dict[str, Path]:
    """Write the numbers, plots and ``report.md`` of ``ra`` (report.md last: a study takes it as
    the mark of a finished analysis); returns name → path."""
    out = Path(out_dir) if out_dir is not None else ra.run_dir / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    per_class = ra.per_class()
    files = write_numbers(ra, out, per_class)
    files.update(_write_figures(ra, out))
    files["report.md"] = out / "report.md"
    atomic_write_text(out / "report.md", render_report(ra, files, per_class))
    for name in OPTIONAL_OUTPUTS:  # a stale one from an earlier analysis would mislead
        if name not in files:
            (out / name).unlink(missing_ok=True)
    return files


def _write_figures(ra: RunAnalysis, out: Path) -> dict[str, Path]:
    """The plots of ``ra``, each a PNG and a PDF; returns name → path."""
    names, k, primary = ra.names, ra.num_classes, ra.primary
    files: dict[str, Path] = {}
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
    return files
