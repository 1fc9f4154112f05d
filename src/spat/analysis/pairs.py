"""The hard class pairs of one set of predictions: which classes an attack turns into which.

SPAT (Hou, Han & Li, arXiv 2210.15068, Sec. 3) observes that adversarial errors concentrate on
hard class pairs, and that a pair is hard when the classifier weight rows ``w_i``, ``w_j`` (and
the feature clusters) lie close. :func:`hard_pairs` measures both on a
:class:`~spat.evaluation.core.Predictions` record: the adversarial confusion matrix, its pairs
ranked by flow, the per-class target concentration, and — given the model — the weight-row
cosine similarity and its Spearman correlation with the pair flows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from torch import nn

from spat.analysis.similarity import find_head_weights
from spat.analysis.stats import (
    Concentration,
    PairFlow,
    RankCorrelation,
    concentration,
    cosine_similarity_matrix,
    offdiag_spearman,
    symmetric_flow_matrix,
    symmetric_flows,
)
from spat.errors import SpatError
from spat.evaluation.attacks import resolve_attack_name
from spat.evaluation.core import Predictions


@dataclass(frozen=True)
class HardPairs:
    """What :func:`hard_pairs` finds.

    ``attack``: the attack analysed (its name in the predictions); ``confusion``: (K, K)
    counts, row = true class, column = prediction under the attack; ``pairs``: unordered pairs
    with at least one error between them, hardest first (by share of the two classes' examples);
    ``concentration``: per class, the most frequent wrong class and its share of the class's
    errors; ``weight_similarity``: ``cos(w_i, w_j)`` of the classifier weight rows (None
    without a model or weights); ``correlation``: Spearman's ρ between that similarity and the
    symmetric pair flow over the K(K−1)/2 pairs (None without similarity); ``note``: why the
    similarity is missing, if it is.
    """

    attack: str
    class_names: tuple[str, ...]
    confusion: np.ndarray
    pairs: list[PairFlow]
    concentration: Concentration
    weight_similarity: np.ndarray | None = None
    correlation: RankCorrelation | None = None
    note: str | None = None

    def text(self, top: int = 5) -> str:
        """A few readable lines: the ``top`` hardest pairs and the weight-similarity link."""
        names = list(self.class_names)
        lines = [f"hard class pairs under {self.attack} "
                 f"(mean top-target share {self.concentration.mean_top_share:.2f}; "
                 f"uniform {self.concentration.uniform_top_share:.2f}):"]
        for p in self.pairs[:top]:
            lines.append(f"  {p.label(names)}: {p.count} errors "
                         f"({p.a_to_b} → and {p.b_to_a} ←), {100 * p.share_of_class:.1f}% of "
                         f"the two classes' examples")
        if not self.pairs:
            lines.append("  none: the attack caused no error")
        if self.correlation is not None:
            lines.append(f"weight-row similarity vs pair flow: {self.correlation.text()}")
        if self.note:
            lines.append(f"note: {self.note}")
        return "\n".join(lines)


def hard_pairs(predictions: Predictions, class_names: Sequence[str],
               model: nn.Module | None = None, *, attack: str | None = None) -> HardPairs:
    """The hard class pairs of ``predictions`` under ``attack``.

    ``attack``: a name the record holds (``"PGD-20"``) or its key (``"pgd20"``); default: the
    record's attack with the lowest accuracy. ``model`` (optional, any ``nn.Module``): its
    classifier weight rows give the similarity — spat's own head, else the last ``nn.Linear``;
    a model with neither is skipped with a note.
    """
    names = tuple(str(n) for n in class_names)
    k = len(names)
    if k < 2:
        raise SpatError(f"hard pairs need at least 2 classes, got {k}")
    if not predictions.adversarial:
        raise SpatError("the predictions hold no attack: hard pairs are adversarial errors")
    if attack is None:
        name = min(predictions.adversarial, key=lambda a: predictions.accuracy(a))
    else:
        try:
            name = resolve_attack_name(attack, predictions.adversarial)
        except KeyError:
            raise SpatError(f"attack {attack!r} not in the predictions (they hold "
                            f"{', '.join(predictions.adversarial)})") from None
    labels = predictions.labels
    if labels.numel() and int(labels.max()) >= k:
        raise SpatError(f"the predictions have label {int(labels.max())} but only {k} class "
                        f"names were given")
    conf = predictions.confusion(name, k).cpu().numpy()
    sim = corr = note = None
    if model is not None:
        w = find_head_weights(model)
        if w is None:
            note = (f"{type(model).__name__} has no nn.Linear layer: weight similarity "
                    f"skipped")
        elif w.shape[0] != k:
            note = (f"the last nn.Linear of {type(model).__name__} has {w.shape[0]} rows, not "
                    f"{k} (one per class): weight similarity skipped")
        else:
            sim = cosine_similarity_matrix(w.detach().cpu().double().numpy())
            corr = offdiag_spearman(sim, symmetric_flow_matrix(conf), symmetric=True)
    return HardPairs(attack=name, class_names=names, confusion=conf,
                     pairs=symmetric_flows(conf), concentration=concentration(conf),
                     weight_similarity=sim, correlation=corr, note=note)
