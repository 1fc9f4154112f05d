"""Hard-pair statistics over training, from the per-epoch validation confusion matrices.

The training loop records, for every epoch, ``val_adv_confusion`` in ``metrics.jsonl``: the
(K, K) counts of true class → class predicted under the validation PGD attack. This module turns
those records into one row per epoch (no model is run).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spat.analysis.stats import concentration, directed_flows, symmetric_flows
from spat.errors import SpatError
from spat.utils.io import nan_to_none, read_jsonl

#: Columns of :func:`over_training`'s rows, in order.
TRAINING_COLUMNS = (
    "epoch", "lr", "train_loss", "train_adv_acc", "val_clean_acc", "val_robust_acc",
    "val_attack", "val_errors", "top_pair", "top_pair_share_of_errors",
    "top_pair_share_of_class", "top_symmetric_pair", "top_symmetric_share_of_all_errors",
    "mean_top_share", "mean_normalized_entropy",
)


def read_metrics(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of ``RUN/metrics.jsonl``, each validated (empty if the file is missing; a
    torn last line is skipped, see :func:`~spat.utils.io.read_jsonl_lines`); a record of the
    wrong shape is a one-line ``SpatError`` naming the file."""
    from spat.validation import check_metrics_record

    return read_jsonl(Path(run_dir) / "metrics.jsonl", check_metrics_record)


def over_training(records: Sequence[dict[str, Any]], names: Sequence[str] | None = None
                  ) -> list[dict[str, Any]]:
    """One row per epoch (see :data:`TRAINING_COLUMNS`).

    ``top_pair``: the hardest directed pair of that epoch's validation confusion (by share of the
    source class, see :func:`~spat.analysis.stats.directed_flows`) with its share of the source's
    misclassified and of all its examples; ``top_symmetric_pair`` with its share of all
    misclassified examples; ``mean_top_share`` / ``mean_normalized_entropy``: the concentration
    averaged over classes with errors. Epochs without a confusion matrix keep the loss and
    accuracies and have ``None`` in the pair columns; NaN becomes ``None``.
    """
    rows = []
    for rec in records:
        row: dict[str, Any] = {c: rec.get(c) for c in TRAINING_COLUMNS[:7]}
        conf = rec.get("val_adv_confusion")
        if conf and names is not None and len(conf) != len(names):
            raise SpatError(f"metrics.jsonl epoch {rec.get('epoch')}: the validation confusion "
                            f"matrix is {len(conf)}×{len(conf)} but the run has {len(names)} "
                            f"classes")
        if conf:
            d = directed_flows(conf)
            s = symmetric_flows(conf)
            c = concentration(conf)
            row.update(
                val_errors=int(c.errors.sum()),
                top_pair=d[0].label(names) if d else None,
                top_pair_share_of_errors=nan_to_none(d[0].share_of_errors) if d else None,
                top_pair_share_of_class=nan_to_none(d[0].share_of_class) if d else None,
                top_symmetric_pair=s[0].label(names) if s else None,
                top_symmetric_share_of_all_errors=(nan_to_none(s[0].share_of_all_errors) if s
                                                   else None),
                mean_top_share=nan_to_none(c.mean_top_share),
                mean_normalized_entropy=nan_to_none(c.mean_normalized_entropy),
            )
        else:
            row.update({k: None for k in TRAINING_COLUMNS[7:]})
        rows.append(row)
    return rows
