"""Batched prediction under attacks: the one evaluation routine (training's per-epoch validation
and ``spat eval`` both call :func:`predict_under_attacks`).

It keeps the predicted class of every example, clean and under every attack, so accuracy,
per-class accuracy, the worst case over attacks and adversarial confusion matrices all follow
without attacking again. Predictions stay on the device until the end (no per-batch host sync).
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from spat.attacks.context import attack_mode
from spat.attacks.presets import AttackSpec
from spat.data import Split, batches
from spat.errors import SpatError
from spat.evaluation.attacks import resolve_attack_name
from spat.utils.io import atomic_write_bytes
from spat.validation import check_prediction_arrays, one_line


@dataclass
class Predictions:
    """Labels and predicted classes of N examples, clean and under each attack (CPU, int64)."""

    labels: torch.Tensor
    clean: torch.Tensor
    adversarial: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.labels.numel())

    def predicted(self, attack: str | None = None) -> torch.Tensor:
        """Predicted classes under ``attack`` (None: clean). ``attack`` is a stored name
        (``"PGD-20"``) or its command-line key (``"pgd20"``), see
        :func:`~spat.evaluation.attacks.resolve_attack_name`; an absent one is a ``KeyError``."""
        if attack is None:
            return self.clean
        return self.adversarial[resolve_attack_name(attack, self.adversarial)]

    def correct(self, attack: str | None = None) -> torch.Tensor:
        """Per-example correctness (N,) bool under ``attack`` (None: clean)."""
        return self.predicted(attack) == self.labels

    def accuracy(self, attack: str | None = None) -> float:
        n = len(self)
        return float(self.correct(attack).sum()) / n if n else float("nan")

    def robust_all(self) -> torch.Tensor:
        """Correct under every attack (and clean): the per-example worst case of the ensemble."""
        ok = self.correct(None)
        for name in self.adversarial:
            ok = ok & self.correct(name)
        return ok

    def save(self, path: str | os.PathLike[str]) -> None:
        """Store as a compressed ``.npz``: ``labels``, ``clean`` and one ``adv/<attack name>``
        array per attack, all in the smallest unsigned integer type that holds the largest class
        index (uint8 up to 256 classes, uint16 up to 65,536); written atomically. There is no
        sentinel value: a negative class index is a ``ValueError``."""
        arrays = {"labels": self.labels, "clean": self.clean,
                  **{f"adv/{k}": v for k, v in self.adversarial.items()}}
        values = {k: v.detach().to("cpu").numpy() for k, v in arrays.items()}
        for k, a in values.items():
            if a.size and int(a.min()) < 0:
                raise ValueError(f"predictions {k!r} hold a negative class index")
        dtype = np.min_scalar_type(max((int(a.max()) for a in values.values() if a.size),
                                       default=0))
        buf = io.BytesIO()
        np.savez_compressed(buf, **{k: a.astype(dtype) for k, a in values.items()})
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Predictions:
        """Read a ``predictions.npz`` (no pickle: ``allow_pickle=False``) into int64 tensors.
        Any integer type is accepted (files written by earlier versions hold int16); an
        unreadable file, an array other than ``labels``, ``clean`` and ``adv/<attack>``, or
        arrays that are not 1-D non-negative integers of one length are a
        :class:`~spat.errors.SpatError` naming ``path``."""
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except Exception as e:  # not a zip, bad CRC, truncated stream, pickled arrays, ...
            raise SpatError(f"cannot read predictions {path} ({type(e).__name__}: "
                            f"{one_line(e, 160)})") from None
        check_prediction_arrays(arrays, str(path))
        other = [k for k in arrays if k not in ("labels", "clean") and not k.startswith("adv/")]
        if other:
            raise SpatError(f"{path}: unexpected array {other[0]!r} (expected labels, clean and "
                            f"adv/<attack>)")
        t = {k: torch.from_numpy(a.astype(np.int64)) for k, a in arrays.items()}
        return cls(labels=t.pop("labels"), clean=t.pop("clean"),
                   adversarial={k.split("/", 1)[1]: v for k, v in t.items()})

    def confusion(self, attack: str | None, num_classes: int) -> torch.Tensor:
        """(K, K) counts: row = true class, column = predicted class under ``attack``."""
        idx = self.labels * num_classes + self.predicted(attack)
        return torch.bincount(idx, minlength=num_classes * num_classes).view(
            num_classes, num_classes
        )


def predict_under_attacks(
    model: nn.Module,
    split: Split,
    attacks: Sequence[AttackSpec],
    *,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> Predictions:
    """Predict ``split`` clean and under each attack, batched, in eval mode.

    Each attack is run on every example (not only on the clean-correct ones), so the
    adversarial prediction of every example is known; an attack starts from the clean image.
    ``on_batch(n)`` is called after each batch with its size (for progress bars).
    The model's mode is restored afterwards.
    """
    labels, clean = [], []
    adv: dict[str, list[torch.Tensor]] = {a.name: [] for a in attacks}
    with attack_mode(model):
        for x, y in batches(split, batch_size, device=device):
            with torch.no_grad():
                clean.append(model(x).argmax(1))
            for a in attacks:
                x_adv = a.run(model, x, y, generator=generator)
                with torch.no_grad():
                    adv[a.name].append(model(x_adv).argmax(1))
            labels.append(y)
            if on_batch is not None:
                on_batch(int(y.shape[0]))
    def cat(ts: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(ts).to("cpu", torch.int64) if ts else torch.zeros(0, dtype=torch.int64)

    return Predictions(labels=cat(labels), clean=cat(clean),
                       adversarial={k: cat(v) for k, v in adv.items()})
