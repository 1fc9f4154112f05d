"""Fingerprints of what an evaluation's numbers depend on: the model's weights, the evaluated
examples and the settings. A saved result (:mod:`spat.evaluation.result_cache`) is reused only
under an equal fingerprint."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from torch import nn

from spat._version import __version__
from spat.data import Split
from spat.evaluation.options import EvalOptions


def model_digest(model: nn.Module) -> str:
    """sha256 of the model's structure (``repr``) and every tensor of its ``state_dict``."""
    h = hashlib.sha256(repr(model).encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
                 .tobytes())
    return h.hexdigest()[:16]


def split_digest(split: Split, index: torch.Tensor) -> str:
    """sha256 of the evaluated subset: its indices, images and labels."""
    h = hashlib.sha256()
    for t in (index.to(torch.int64), split.images, split.labels):
        h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def json_digest(obj: Any) -> str:
    """12 hex digits of the sha256 of ``obj`` as canonical JSON."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def common_fingerprint(model: nn.Module, sub: Split, index: torch.Tensor, opts: EvalOptions,
                       device: torch.device, scale: float | None) -> dict[str, Any]:
    """The part of every saved result's fingerprint that all attacks share: model, subset
    (``sub``, the examples at ``index``), ε, norm, seed, batch size, device type, spat's
    version, and the attack logits when they are not the model's own (absent: the model's
    logits, so results saved before the option existed stay reusable)."""
    common: dict[str, Any] = {
        "model": model_digest(model), "data": split_digest(sub, index), "eps": opts.eps,
        "norm": opts.norm, "seed": opts.seed, "batch_size": opts.batch_size,
        "device_type": device.type, "spat": __version__,
    }
    if opts.attack_logits != "model":
        common["attack_logits"] = opts.attack_logits
        common["logit_scale"] = scale
    return common
