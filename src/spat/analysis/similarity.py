"""Class similarity from a trained model: classifier weight rows and class-mean features.

SPAT's argument (arXiv 2210.15068, Sec. 3) is that the hard class pair of class ``i`` is the
class whose classifier weight ``w_j`` (and feature cluster) lies closest to ``w_i``: an
untargeted attack moves g(x) across the nearest decision boundary. These functions give the two
(K, K) cosine-similarity matrices that :func:`spat.analysis.stats.offdiag_spearman` compares
with the adversarial flows.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from spat.analysis.stats import cosine_similarity_matrix
from spat.data import Split, batches
from spat.errors import SpatError
from spat.models import unwrap


def find_head_weights(model: nn.Module) -> torch.Tensor | None:
    """The classifier weight rows ``w_k`` (K, d) of any ``nn.Module``, or None.

    A spat :class:`~spat.models.Classifier` (also inside DDP / torch.compile wrappers): its head
    (linear or cosine). Any other module: the weight of its last ``nn.Linear`` (in the order of
    ``modules()``, which for the usual ``features → ... → fc`` networks is the output layer);
    None when it has none (then there is no weight similarity to compute).
    """
    try:
        return unwrap(model).head.weight
    except TypeError:
        pass
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1].weight if linears else None


def head_weights(model: nn.Module) -> np.ndarray:
    """The classifier's weight matrix (K, d) as float64 numpy (see :func:`find_head_weights`);
    a one-line :class:`SpatError` for a model without a final linear layer."""
    w = find_head_weights(model)
    if w is None:
        raise SpatError(f"{type(model).__name__} has no classifier weights (neither a spat "
                        f"Classifier nor a module with an nn.Linear layer)")
    return w.detach().to("cpu", torch.float64).numpy()


def head_similarity(model: nn.Module) -> np.ndarray:
    """``cos(w_i, w_j)`` between the classifier weight rows, shape (K, K)."""
    return cosine_similarity_matrix(head_weights(model))


@torch.no_grad()
def class_mean_features(
    model: nn.Module,
    split: Split,
    num_classes: int,
    *,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Mean penultimate feature g(x) of each class on the clean images of ``split``, (K, d).

    The model is run in eval mode (its mode is restored). A class with no example gets a NaN
    row.
    """
    clf = unwrap(model)
    was_training = clf.training
    clf.eval()
    try:
        sums = torch.zeros(num_classes, clf.out_dim, dtype=torch.float64, device=device)
        counts = torch.zeros(num_classes, dtype=torch.float64, device=device)
        for x, y in batches(split, batch_size, device=device):
            g = clf.features(x).double()
            sums.index_add_(0, y, g)
            counts += torch.bincount(y, minlength=num_classes).double()
    finally:
        clf.train(was_training)
    means = sums / counts[:, None]
    means[counts == 0] = float("nan")
    return means.cpu().numpy()


def feature_similarity(means: np.ndarray) -> np.ndarray:
    """Cosine between class-mean features after subtracting their mean (the global centre, as
    in the neural-collapse literature), shape (K, K). Without centring, ReLU features of all
    classes share a large positive component and every cosine is close to 1."""
    return cosine_similarity_matrix(means, center=True)
