"""Models: backbones, the linear and SPAT cosine heads, and :func:`build_model`.

Every backbone takes ``(in_channels, image_size)`` and returns a module with ``out_dim`` whose
``forward(x)`` gives the penultimate features (N, out_dim); :func:`build_model` wraps it as
``Normalize → backbone → head`` in a :class:`Classifier`. Backbones: TRADES' SmallCNN
(arXiv 1901.08573), ResNet-18 (arXiv 1512.03385), PreAct ResNet-18 (arXiv 1603.05027) and
WideResNets (arXiv 1605.07146, TRADES' variant); heads: linear or SPAT's cosine classifier
(arXiv 2210.15068).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from torch import nn

from spat.errors import SpatError, unknown_name
from spat.models.classifier import Classifier, Normalize, count_parameters, logit_scale, unwrap
from spat.models.heads import COSINE_SCALE, CosineLinear, linear_head
from spat.models.resnet import preact_resnet18, resnet18
from spat.models.small_cnn import small_cnn
from spat.models.wideresnet import check_wrn, wide_resnet, wrn28_10, wrn34_10

__all__ = [
    "HEADS",
    "MODELS",
    "WRN_PATTERN",
    "Classifier",
    "CosineLinear",
    "Normalize",
    "build_backbone",
    "build_model",
    "count_parameters",
    "logit_scale",
    "model_names",
    "unwrap",
]

#: name → backbone constructor ``(in_channels, image_size) -> module`` with ``out_dim``.
MODELS: dict[str, Callable[..., nn.Module]] = {
    "small_cnn": small_cnn,
    "resnet18": resnet18,
    "preact_resnet18": preact_resnet18,
    "wrn28_10": wrn28_10,
    "wrn34_10": wrn34_10,
}

HEADS = ("linear", "cosine")

#: Generic WideResNet names, ``wrn{depth}_{width}`` (e.g. ``wrn16_4``), accepted by
#: :func:`build_model` besides the fixed names of :data:`MODELS`.
WRN_PATTERN = "wrn<depth>_<width>"
_WRN_RE = re.compile(r"wrn(\d+)_(\d+)")


def model_names() -> list[str]:
    """The fixed model names (the keys of :data:`MODELS`), each buildable as is. Generic
    ``wrn{depth}_{width}`` names (:data:`WRN_PATTERN`) are accepted too but not listed."""
    return list(MODELS)


def build_backbone(
    name: str, *, in_channels: int, image_size: tuple[int, int]
) -> nn.Module:
    """The backbone called ``name`` (a key of :data:`MODELS` or ``wrn{depth}_{width}``)."""
    if name in MODELS:
        return MODELS[name](in_channels, image_size)
    match = _WRN_RE.fullmatch(name)
    if match is None:
        raise unknown_name("model", name, [*MODELS, WRN_PATTERN])
    depth, width = int(match.group(1)), int(match.group(2))
    check_wrn(depth, width)
    return wide_resnet(depth, width, in_channels, image_size)


def build_model(
    name: str,
    *,
    num_classes: int,
    in_channels: int,
    image_size: tuple[int, int],
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    head: str = "linear",
    cosine_scale: float = 8.0,
    cosine_bias: bool = True,
) -> Classifier:
    """``Normalize(mean, std) → backbone → head`` for inputs in [0, 1] of shape
    (in_channels, *image_size).

    ``head="linear"``: :class:`torch.nn.Linear` (default weight init, bias zero; TRADES'
    SmallCNN zero-initialises its whole last layer, which we do not). ``head="cosine"``: SPAT's
    :class:`CosineLinear` with scale ``cosine_scale`` and a bias if ``cosine_bias``; its logits
    are ``s·(ŵᵀĝ + b)`` (arXiv 2210.15068). Bad names or values raise :class:`SpatError`.
    """
    if head not in HEADS:
        raise unknown_name("head", head, HEADS)
    if num_classes < 2:
        raise SpatError(f"num_classes must be at least 2, got {num_classes}")
    if in_channels < 1:
        raise SpatError(f"in_channels must be positive, got {in_channels}")
    size = tuple(int(v) for v in image_size)
    if len(size) != 2 or min(size) < 1:
        raise SpatError(f"image_size must be two positive integers, got {tuple(image_size)}")
    if head == "cosine":
        COSINE_SCALE.check(cosine_scale, "cosine scale")
    backbone = build_backbone(name, in_channels=in_channels, image_size=(size[0], size[1]))
    d = int(backbone.out_dim)
    head_module: nn.Linear | CosineLinear
    if head == "cosine":
        head_module = CosineLinear(d, num_classes, cosine_scale, cosine_bias)
    else:
        head_module = linear_head(d, num_classes)
    return Classifier(Normalize(in_channels, mean, std), backbone, head_module)
