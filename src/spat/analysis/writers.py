"""The numbers of ``spat analyze`` as files: CSV and JSON writers, and :func:`write_numbers`.

Every file is written atomically. Floats in CSVs have 6 significant digits and NaN is an empty
cell; JSON has NaN as ``null``. :func:`write_numbers` writes a run's confusion matrices, ranked
hard class pairs (directed and symmetric), per-class table, similarity matrices, per-epoch table
and ``analysis.json``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from spat.analysis.over_epochs import TRAINING_COLUMNS
from spat.analysis.record import HEAD_SIM, RunAnalysis
from spat.analysis.stats import (
    Concentration,
    concentration,
    directed_flows,
    flow_summary,
    symmetric_flows,
)
from spat.utils.io import atomic_write_text, json_safe
from spat.utils.reporting import csv_text


def slug(text: str) -> str:
    """A file-name-safe lower-case form of an attack name (``"PGD-20"`` → ``"pgd-20"``)."""
    return re.sub(r"[^a-z0-9.+-]+", "_", text.lower()).strip("_") or "attack"



def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    """Write a CSV atomically (:func:`spat.utils.reporting.csv_text`)."""
    atomic_write_text(path, csv_text(header, rows))
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


def matrix_csv(path: Path, m: np.ndarray, names: Sequence[str], corner: str) -> Path:
    """Write a (K, K) matrix as a CSV with the class names as first row and column."""
    return write_csv(path, [corner, *names],
                     [[names[i], *[_fmt_int(v) for v in m[i]]] for i in range(len(names))])


def _fmt_int(v: float) -> Any:
    return int(v) if float(v).is_integer() else float(v)



def write_numbers(ra: RunAnalysis, out: Path, per_class: Sequence[dict[str, Any]]
                  ) -> dict[str, Path]:
    """Write the CSVs and ``analysis.json`` of ``ra`` into ``out`` (an existing folder);
    ``per_class`` is ``ra.per_class()``. Returns file name → path."""
    names = ra.names
    files: dict[str, Path] = {}
    for key, m in ra.confusions.items():
        files[f"confusion_{slug(key)}.csv"] = matrix_csv(
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
    files["per_class.csv"] = dict_rows_csv(out / "per_class.csv", per_class)
    for sname, sim in ra.similarities.items():
        fname = "similarity_head.csv" if sname == HEAD_SIM else "similarity_features.csv"
        files[fname] = matrix_csv(out / fname, np.round(sim, 6), names, "cosine")
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
    return files


def _conc_dict(c: Concentration, names: Sequence[str]) -> dict[str, Any]:
    return {
        "top_target": [names[t] if t >= 0 else None for t in c.top_target],
        "top_share": c.top_share, "normalized_entropy": c.normalized_entropy,
        "errors": c.errors.astype(int), "mean_top_share": c.mean_top_share,
        "mean_normalized_entropy": c.mean_normalized_entropy,
        "uniform_top_share": c.uniform_top_share, "uniform_normalized_entropy": c.UNIFORM,
    }
