"""Classifier heads: the plain linear head and SPAT's cosine (normalised) head.

SPAT (Hou, Han & Li, AAAI-23, arXiv 2210.15068) replaces the last linear layer by a cosine
classifier with a bias, so that the self-paced modulation of the logits acts on bounded values
z_j = ŵ_jᵀ ĝ(x) + b_j, and multiplies them by a fixed scale (temperature) s in the losses.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from spat.errors import SpatError
from spat.validation import Range

#: SPAT's scale s, the meaningful values (the head's and ``TrainConfig.cosine_scale``'s one range).
COSINE_SCALE = Range(0.0, low_open=True, reason="s multiplies the cosines into the logits s·z: "
                     "s = 0 would make every prediction uniform and s < 0 reverse the class "
                     "ranking")

#: eps of :func:`torch.nn.functional.normalize` for features and weight rows (its default).
NORMALIZE_EPS = 1e-12


def linear_head(in_features: int, out_features: int) -> nn.Linear:
    """The plain linear head: torch's default weight init, bias zero (as TRADES' WideResNet)."""
    head = nn.Linear(in_features, out_features)
    nn.init.zeros_(head.bias)
    return head


class CosineLinear(nn.Module):
    """SPAT's cosine classifier (arXiv 2210.15068; the official code's last layer with
    ``normalize=True``, https://github.com/puerrrr/Self-Paced-Adversarial-Training).

    ``forward(g)`` returns the logits ``s · (ŵ_jᵀ ĝ + b_j)`` with ĝ = g/‖g‖₂ and
    ŵ_j = w_j/‖w_j‖₂ (:func:`torch.nn.functional.normalize` with ``eps``), so
    ``|logits/s − b| ≤ 1``. :meth:`cosine` returns the raw temperature-1 values
    ``z = ŵᵀĝ + b``.

    Differences from the official layer:

    * The official forward overwrites ``weight.data`` with its normalised rows on every call,
      outside autograd. We never mutate a parameter in ``forward`` (that breaks DDP's
      parameter/bucket views, AMP's master weights and torch.compile's guards) and normalise
      inside the computation instead. The values z are identical; the gradient differs
      only in that it flows through the normalisation (it is orthogonal to w_j and the logits
      are invariant to ‖w_j‖), whereas the official gradient is taken w.r.t. the already
      unit-norm rows as if they were free parameters.
    * The official model returns the temperature-1 values z and multiplies by s inside the
      loss. Our head returns ``s·z`` (the training temperature), so that every consumer
      (training losses, PGD/AutoAttack evaluation, exported models) sees the same logits:
      the temperature-1 logits lie in [−1−|b|, 1+|b|], their softmax is nearly uniform, and
      the cross-entropy gradient ≈ ∇(mean_j z_j − z_y) spreads over all classes instead of
      heading for the closest wrong class, so gradient attacks are weaker and robustness is
      overstated (gradient masking by temperature); the official evaluation's PGD-20 attacks
      these temperature-1 logits (its CIFAR-10 script attacks ``model(x)``), which is why we
      evaluate and export the ``s·z`` the model was trained with.
      ``s`` is a plain float attribute :attr:`scale`, not a parameter; losses that need z
      divide by it (see :func:`spat.models.logit_scale`).
    * The normalisation and the product are computed in float32 with autocast disabled, so
      the logits are float32 under ``torch.autocast`` (bf16/fp16 features are upcast).

    Init: weight as :class:`torch.nn.Linear` (only the row directions matter), bias zero (as the
    official WideResNet's init loop zeroes ``fc.bias``).
    """

    def __init__(
        self, in_features: int, out_features: int, scale: float = 8.0, bias: bool = True
    ) -> None:
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise SpatError(
                f"cosine head needs positive sizes, got in={in_features}, out={out_features}"
            )
        COSINE_SCALE.check(scale, "cosine scale")
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.scale = float(scale)
        self.eps = NORMALIZE_EPS
        self.weight = nn.Parameter(torch.empty(self.out_features, self.in_features))
        if bias:
            self.bias: nn.Parameter | None = nn.Parameter(torch.empty(self.out_features))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weight as :class:`torch.nn.Linear` (Kaiming-uniform, a=√5); bias zero."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def cosine(self, g: torch.Tensor) -> torch.Tensor:
        """Raw cosine logits ``z = ŵᵀ ĝ(x) + b`` (temperature 1), float32, shape (N, K)."""
        with torch.autocast(device_type=g.device.type, enabled=False):
            g_hat = F.normalize(g.float(), p=2.0, dim=1, eps=self.eps)
            w_hat = F.normalize(self.weight.float(), p=2.0, dim=1, eps=self.eps)
            bias = None if self.bias is None else self.bias.float()
            return F.linear(g_hat, w_hat, bias)

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        """Scaled logits ``s · (ŵᵀ ĝ + b)``, float32, shape (N, K)."""
        return self.scale * self.cosine(g)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"scale={self.scale}, bias={self.bias is not None}"
        )
