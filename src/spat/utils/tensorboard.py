"""Optional TensorBoard logging (``spat train --tensorboard``, ``spat eval --tensorboard``).

``metrics.jsonl`` and ``eval/report.json`` stay the record; this mirrors them into TensorBoard
event files in ``RUN/tensorboard/`` for the dashboards researchers already use. Only rank 0
writes. ``torch.utils.tensorboard`` (which needs the ``tensorboard`` package, the optional
extra ``spat[tensorboard]``) and matplotlib are imported only when a writer is opened.

Tags (step = the 1-based epoch; eval results at the evaluated checkpoint's epoch):

* ``lr``; ``train/loss``, ``train/clean_acc``, ``train/adv_acc``, ``train/<part>`` (each loss
  part of the method, e.g. ``train/loss_nat``, ``train/loss_rob``), ``train/images_per_s``,
  ``train/seconds``; ``val/clean_acc``, ``val/robust_acc``, ``val/seconds`` — each the value of
  the metrics.jsonl field of the same name with ``train_``/``val_`` turned into a folder
  (accuracies as fractions in [0, 1], as in the JSONL);
* ``val/adv_confusion``: image of the validation adversarial confusion matrix (rows: true
  class, columns: class predicted under the validation attack; colour: share of the row);
* ``eval/clean_acc``, ``eval/<attack name>`` (accuracy under each attack of ``spat eval``),
  ``eval/worst_case`` (correct under every attack), ``eval/autoattack`` when AutoAttack ran.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spat.errors import SpatError
from spat.utils.log import logger

#: Folder of a run directory holding the event files.
TB_DIR = "tensorboard"
#: metrics.jsonl fields that are not scalars of the epoch (or not numbers).
_NOT_SCALARS = {"epoch", "val_attack", "val_adv_confusion"}


def require_tensorboard() -> None:
    """A one-line :class:`SpatError` when ``torch.utils.tensorboard`` cannot be imported
    (the ``tensorboard`` package is missing)."""
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        raise SpatError("--tensorboard needs the tensorboard package "
                        "(pip install 'spat[tensorboard]' or pip install tensorboard)") from None


def scalar_tags(record: dict[str, Any]) -> dict[str, float]:
    """The scalars of one metrics.jsonl record under their TensorBoard tags:
    ``train_loss`` -> ``train/loss``, ``val_robust_acc`` -> ``val/robust_acc``, ``lr`` -> ``lr``.
    Fields that are None, not numbers, or not finite are left out."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if key in _NOT_SCALARS or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if not math.isfinite(value):
            continue
        for prefix in ("train_", "val_"):
            if key.startswith(prefix):
                key = f"{prefix[:-1]}/{key[len(prefix):]}"
                break
        out[key] = float(value)
    return out


def confusion_image(confusion: Sequence[Sequence[int]],
                    class_names: Sequence[str] | None = None, title: str = "") -> Any:
    """An (H, W, 3) uint8 numpy image of a confusion matrix, each row scaled to its share
    (rows: true class, columns: predicted class), with class names on the axes."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    m = np.asarray(confusion, dtype=np.float64)
    k = m.shape[0]
    share = m / np.maximum(m.sum(1, keepdims=True), 1.0)
    names = list(class_names) if class_names is not None and len(class_names) == k else [
        str(i) for i in range(k)]
    size = 2.5 + 0.3 * k
    fig = Figure(figsize=(size, size), dpi=80)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(share, vmin=0.0, vmax=1.0, cmap="viridis")
    ax.set_xticks(range(k), names, rotation=90, fontsize=7)
    ax.set_yticks(range(k), names, fontsize=7)
    ax.set_xlabel("predicted under attack")
    ax.set_ylabel("true class")
    if title:
        ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


class TensorBoardLog:
    """A ``SummaryWriter`` on ``run_dir/tensorboard``. ``purge_step``: on resume, the first
    epoch that is trained again — events of that epoch or later left by the interrupted run
    are discarded, so the curves continue without duplicates."""

    def __init__(self, run_dir: str | os.PathLike[str], *, purge_step: int | None = None) -> None:
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(run_dir) / TB_DIR
        self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge_step)
        logger.debug("TensorBoard: writing to %s%s", self.log_dir,
                     f" (events from epoch {purge_step} on discarded)" if purge_step else "")

    def epoch(self, record: dict[str, Any], class_names: Sequence[str] | None = None) -> None:
        """Write one metrics.jsonl record (its ``epoch`` is the step) and flush."""
        step = int(record["epoch"])
        for tag, value in scalar_tags(record).items():
            self.writer.add_scalar(tag, value, step)
        if record.get("val_adv_confusion") is not None:
            img = confusion_image(record["val_adv_confusion"], class_names,
                                  f"validation {record.get('val_attack', '')}, epoch {step}")
            self.writer.add_image("val/adv_confusion", img, step, dataformats="HWC")
        self.writer.flush()

    def eval_report(self, report: dict[str, Any], step: int) -> None:
        """Write the accuracies of a ``spat eval`` report (report.json's document) at ``step``
        (the evaluated checkpoint's epoch) and flush."""
        self.writer.add_scalar("eval/clean_acc", float(report["clean_acc"]), step)
        for a in report.get("attacks", []):
            self.writer.add_scalar(f"eval/{a['name']}", float(a["accuracy"]), step)
        self.writer.add_scalar("eval/worst_case", float(report["robust_acc"]), step)
        if report.get("autoattack_acc") is not None:
            self.writer.add_scalar("eval/autoattack", float(report["autoattack_acc"]), step)
        self.writer.add_text("eval/settings", f"ε = {report['eps']:.6g} ({report['norm']}), "
                             f"{report['n_examples']} examples, attacks: "
                             f"{', '.join(a['name'] for a in report.get('attacks', []))}", step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
