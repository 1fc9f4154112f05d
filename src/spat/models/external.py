"""Models from outside a spat run: user modules named ``package.module:attr``, weights files
(safetensors, or torch files read with ``weights_only=True``), the official SPAT/TRADES
checkpoint layouts, and spat's own portable model files.

Every model this module returns maps images in [0, 1], shape (N, C, H, W), to logits (N, K) and
is in eval mode.

Official layouts (read from the reference code, not copied):

* WideResNet (TRADES, arXiv 1901.08573; SPAT, arXiv 2210.15068): ``conv1.weight``,
  ``block{1,2,3}.layer.{j}.{bn1,conv1,bn2,conv2,convShortcut}``,
  an unused ``sub_block1.*``, ``bn1.*``, ``fc.{weight,bias}``. Depth 6n+4 and width k are read
  from the shapes: n blocks per group, ``block1.layer.0.conv1`` has 16k output channels.
* ResNet-18 (TRADES' and SPAT's): ``conv1``, ``bn1``,
  ``layer{1..4}.{0,1}.{conv1,bn1,conv2,bn2,shortcut.0,shortcut.1}``, ``linear.{weight,bias}``.

Both take inputs in [0, 1] with no normalisation (the official training scripts use
``transforms.ToTensor()`` only), so the converted model gets an identity :class:`Normalize`.
A ``module.`` prefix (``nn.DataParallel``) is stripped, and ``num_batches_tracked`` entries
missing from old checkpoints are filled with 0 (they are not used in eval mode).

Head and temperature (``docs/evaluation.md``, "Which logits are attacked"): the
official SPAT model renormalises the rows of ``fc`` in place on every forward with
``normalize=True`` and returns the temperature-1 cosine logits z = ŵᵀĝ + b; its training loss
multiplies by s = 8, and its per-epoch PGD-20 attacks z itself (temperature 1), while its clean
accuracy uses ``normalize=False`` (a plain linear layer on unnormalised features, a different
forward). ``layout="official-spat"`` converts ``fc`` into spat's
:class:`~spat.models.heads.CosineLinear` with scale s (default 8), so the model outputs s·z, the
logits at the training temperature, and every attack (and clean accuracy) sees that one forward.
The argmax, hence clean accuracy, is the same at any s; gradient attacks on s·z are stronger
than on z (CE on near-flat logits), and AutoAttack's DLR losses are invariant to s.
``layout="official-trades"`` keeps ``fc`` as a plain linear head (TRADES).
"""

from __future__ import annotations

import importlib
import json
import os
import pickle
import re
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spat import checkpoint as ckpt
from spat.errors import SpatError
from spat.models import build_model
from spat.models.classifier import Classifier
from spat.models.heads import COSINE_SCALE
from spat.validation import loads_json, one_line

#: ``--model`` names of the official checkpoint layouts → the head they are loaded with.
OFFICIAL_LAYOUTS: dict[str, str] = {"official-trades": "linear", "official-spat": "cosine"}
#: s of ``official-spat``'s cosine head unless ``--cosine-scale`` says otherwise: the official
#: SPAT training's scale.
OFFICIAL_SPAT_SCALE = 8.0

#: Format tag of spat's portable model files (safetensors metadata key ``format``).
PORTABLE_FORMAT = "spat.model/1"

_SPEC_RE = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_WRN_BLOCK = re.compile(r"block([123])\.layer\.(\d+)\.(.+)")
_SAFETENSORS_SUFFIXES = (".safetensors", ".st")


def import_object(spec: str) -> Any:
    """The object named by ``package.module:attr`` (``attr`` may be dotted: ``mod:Class.make``).

    The module is imported normally (its top-level code runs: only name modules you trust; the
    current directory is importable, as with ``python -m``).
    """
    if not _SPEC_RE.fullmatch(spec):
        raise SpatError(f"--model must be package.module:attr (e.g. mypkg.nets:build) or one of "
                        f"{', '.join(OFFICIAL_LAYOUTS)}, got {spec!r}")
    mod_name, attr = spec.split(":", 1)
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, "")  # as ``python -m``: modules in the current directory
    try:
        obj: Any = importlib.import_module(mod_name)
    except ImportError as e:
        raise SpatError(f"cannot import {mod_name!r} for --model {spec}: {e}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise SpatError(f"{mod_name!r} has no attribute {attr!r} (--model {spec})")
        obj = getattr(obj, part)
    return obj


def instantiate(obj: Any, spec: str = "model") -> nn.Module:
    """``obj`` itself if it is an ``nn.Module`` instance, else ``obj()`` (a class or a factory
    called with no arguments), which must return an ``nn.Module``."""
    if isinstance(obj, nn.Module):
        return obj
    if not callable(obj):
        raise SpatError(f"{spec} is neither an nn.Module nor callable (got {type(obj).__name__})")
    try:
        model = obj()
    except TypeError as e:
        raise SpatError(f"calling {spec}() failed: {e} (the factory must take no required "
                        f"arguments)") from None
    if not isinstance(model, nn.Module):
        raise SpatError(f"{spec}() returned {type(model).__name__}, not a torch.nn.Module")
    return model


def read_weights(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A state dict from a weights file: safetensors (through the shared checkpoint loader,
    :func:`spat.checkpoint.load_weights`), or a torch file read with ``weights_only=True`` (a
    file that would need to run code is refused). A torch file may hold the state dict itself or
    a dict with it under ``state_dict``, ``model_state_dict`` or ``model``. A ``module.`` prefix
    (DataParallel/DDP) is removed. Non-finite values are refused."""
    p = Path(path)
    if not p.is_file():
        raise SpatError(f"weights file not found: {p}")
    with open(p, "rb") as f:
        head = f.read(9)
    # safetensors: an 8-byte little-endian header length, then the JSON header
    is_safetensors = p.suffix in _SAFETENSORS_SUFFIXES or (
        len(head) == 9 and head[8:9] == b"{"
        and int.from_bytes(head[:8], "little") < p.stat().st_size)
    if is_safetensors:
        sd: Any = ckpt.load_weights(p)
    else:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sd = torch.load(p, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise SpatError(f"refusing to load {p}: it is not a plain tensors-and-values file "
                            f"and unpickling it could run code ({one_line(e, 160)})"
                            ) from None
        except (RuntimeError, EOFError, OSError, ValueError) as e:
            raise SpatError(f"weights file {p} is unreadable ({one_line(e, 200)})"
                            ) from None
        except Exception as e:  # random bytes reach the unpickler's internals (IndexError, ...)
            raise SpatError(f"weights file {p} is unreadable ({type(e).__name__}: "
                            f"{one_line(e, 160)})") from None
        if isinstance(sd, dict):
            for key in ("state_dict", "model_state_dict", "model"):
                if isinstance(sd.get(key), dict):
                    sd = sd[key]
                    break
        if not isinstance(sd, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                               for k, v in sd.items()):
            raise SpatError(f"{p} does not hold a state dict (name → tensor)")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    if not is_safetensors:  # the safetensors loader checked already
        from spat.validation import check_finite_tensors

        check_finite_tensors(sd, str(p))
    return dict(sd)


def official_layout(weights: Mapping[str, torch.Tensor]) -> str | None:
    """``"wrn"`` or ``"resnet18"`` when ``weights`` has the official TRADES/SPAT key layout,
    else ``None``."""
    if "fc.weight" in weights and "block1.layer.0.conv1.weight" in weights:
        return "wrn"
    if "linear.weight" in weights and "layer1.0.conv1.weight" in weights:
        return "resnet18"
    return None


def _fill_counters(model: nn.Module, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for k, v in model.state_dict().items():
        if k.endswith("num_batches_tracked") and k not in sd:
            sd[k] = torch.zeros_like(v)
    return sd


def convert_official(
    weights: Mapping[str, torch.Tensor], *, head: str = "linear", cosine_scale: float = 8.0,
    image_size: tuple[int, int] = (32, 32),
) -> tuple[Classifier, dict[str, torch.Tensor], str]:
    """Build the spat :class:`Classifier` for an official TRADES/SPAT state dict and map its keys.

    Returns ``(model, spat_state_dict, architecture)``, architecture a spat model name
    (``wrn34_10``, ``resnet18``, ...); the model is not loaded yet. ``head="cosine"`` reads
    ``fc``/``linear`` as SPAT's cosine head with scale ``cosine_scale`` (see the module
    docstring); identity normalisation (official models take raw [0, 1] inputs).
    """
    kind = official_layout(weights)
    sd: dict[str, torch.Tensor] = {}
    if kind == "wrn":
        groups = sorted({int(m.group(2)) for k in weights if (m := _WRN_BLOCK.fullmatch(k))
                         and m.group(1) == "1"})
        n = len(groups)
        width = int(weights["block1.layer.0.conv1.weight"].shape[0]) // 16
        arch = f"wrn{6 * n + 4}_{width}"
        last_w, last_b = "fc.weight", "fc.bias"
        for k, v in weights.items():
            if k.startswith("sub_block1."):  # built but never called by the official forward
                continue
            m = _WRN_BLOCK.fullmatch(k)
            if m:
                rest = m.group(3).replace("convShortcut", "conv_shortcut")
                sd[f"backbone.block{m.group(1)}.{m.group(2)}.{rest}"] = v
            elif k.startswith(("conv1.", "bn1.")):
                sd[f"backbone.{k}"] = v
            elif k not in (last_w, last_b):
                raise SpatError(f"unexpected key {k!r} in an official WideResNet state dict")
    elif kind == "resnet18":
        for stage in range(1, 5):
            blocks = {int(k.split(".")[1]) for k in weights if k.startswith(f"layer{stage}.")}
            if blocks != {0, 1}:
                raise SpatError(f"only the official ResNet-18 layout is supported (2 blocks per "
                                f"stage); layer{stage} has {len(blocks)}")
        arch = "resnet18"
        last_w, last_b = "linear.weight", "linear.bias"
        for k, v in weights.items():
            if not k.startswith(("linear.",)):
                sd[f"backbone.{k}"] = v
    else:
        raise SpatError("the weights are not in an official TRADES/SPAT layout (expected "
                        "conv1/block1.layer.0.*/fc.* for WideResNet or conv1/layer1.0.*/linear.* "
                        "for ResNet-18)")
    if last_w not in weights:
        raise SpatError(f"the official state dict has no {last_w!r}")
    w = weights[last_w]
    num_classes, in_channels = int(w.shape[0]), int(weights["conv1.weight"].shape[1])
    model = build_model(arch, num_classes=num_classes, in_channels=in_channels,
                        image_size=image_size, head=head, cosine_scale=cosine_scale,
                        cosine_bias=last_b in weights)
    sd["head.weight"] = w
    if last_b in weights:
        sd["head.bias"] = weights[last_b]
    elif head == "linear":
        sd["head.bias"] = torch.zeros(num_classes, dtype=w.dtype)
    for k in ("normalize.mean", "normalize.std"):
        sd[k] = model.state_dict()[k].clone()
    return model, _fill_counters(model, sd), arch


def load_state_into(model: nn.Module, weights: Mapping[str, torch.Tensor], source: str) -> None:
    """``model.load_state_dict(weights)`` (strict), with a one-line error naming what differs."""
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    extra = sorted(set(weights) - set(own))
    shapes = sorted(k for k in set(own) & set(weights) if own[k].shape != weights[k].shape)
    if missing or extra or shapes:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", extra), ("wrong shape", shapes)):
            if keys:
                more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
                parts.append(f"{label}: {', '.join(keys[:3])}{more}")
        raise SpatError(f"the weights in {source} do not fit the model ({'; '.join(parts)})")
    model.load_state_dict(dict(weights))


def architecture_name(model: nn.Module) -> str:
    """spat's model name of a :class:`Classifier`'s backbone (``wrn34_10``, ``resnet18``,
    ...), else the class name of ``model``."""
    from spat.models.resnet import PreActResNet, ResNet
    from spat.models.small_cnn import SmallCNN
    from spat.models.wideresnet import WideResNet

    if isinstance(model, Classifier):
        b = model.backbone
        if isinstance(b, WideResNet):
            return f"wrn{b.depth}_{b.widen_factor}"
        for cls, name in ((ResNet, "resnet18"), (PreActResNet, "preact_resnet18"),
                          (SmallCNN, "small_cnn")):
            if isinstance(b, cls):
                return name
        return type(b).__name__
    return type(model).__name__


def head_name(model: nn.Module) -> str | None:
    """``"cosine"`` or ``"linear"`` for a spat :class:`Classifier`, else ``None``."""
    return model_info(model)["head"] if isinstance(model, Classifier) else None


def model_info(model: nn.Module) -> dict[str, Any]:
    """What a portable file records about a spat :class:`Classifier` (shapes come from the
    weights; names from the caller)."""
    from spat.models.heads import CosineLinear

    if not isinstance(model, Classifier):
        raise SpatError(f"only spat Classifier models can be exported, got "
                        f"{type(model).__name__}")
    head = model.head
    return {
        "head": "cosine" if isinstance(head, CosineLinear) else "linear",
        "cosine_scale": head.scale if isinstance(head, CosineLinear) else None,
        "cosine_bias": getattr(head, "bias", None) is not None,
        "num_classes": model.num_classes,
        "in_channels": int(model.normalize.mean.shape[1]),
        "mean": model.normalize.mean.flatten().tolist(),
        "std": model.normalize.std.flatten().tolist(),
    }


def portable_metadata(
    model: nn.Module, *, architecture: str, image_size: tuple[int, int],
    class_names: list[str] | tuple[str, ...], dataset: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """The safetensors metadata of a portable model file (every value a JSON string)."""
    from spat._version import __version__

    info = model_info(model)
    if len(class_names) != info["num_classes"]:
        raise SpatError(f"{len(class_names)} class names for a model with "
                        f"{info['num_classes']} outputs")
    fields: dict[str, Any] = {
        "architecture": architecture, **info,
        "input_shape": [info["in_channels"], int(image_size[0]), int(image_size[1])],
        "input_range": [0.0, 1.0],
        "class_names": list(class_names), "dataset": dataset, "spat_version": __version__,
        "logits": ("s·(cosine + bias), the training temperature" if info["head"] == "cosine"
                   else "linear head"),
        **(extra or {}),
    }
    meta = {k: json.dumps(v, ensure_ascii=False) for k, v in fields.items()}
    meta["format"] = PORTABLE_FORMAT
    return meta


def save_portable(
    model: nn.Module, path: str | os.PathLike[str], *, architecture: str,
    image_size: tuple[int, int], class_names: list[str] | tuple[str, ...],
    dataset: str | None = None, extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` (a spat :class:`Classifier`) as one safetensors file whose metadata is
    enough to rebuild it with :func:`load_model` (architecture, head, cosine scale s,
    normalisation mean/std, input shape, class names, spat version). Atomic, mode
    ``0o666 & ~umask``."""
    from safetensors.torch import save as safetensors_bytes

    from spat.utils.io import atomic_write_bytes

    meta = portable_metadata(model, architecture=architecture, image_size=image_size,
                             class_names=class_names, dataset=dataset, extra=extra)
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    out = Path(path)
    atomic_write_bytes(out, safetensors_bytes(cpu, metadata=meta))
    return out


def read_portable_metadata(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The decoded metadata of a spat portable file; ``None`` if the file has none (or is not
    a safetensors file)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except (SafetensorError, OSError, ValueError):
        return None
    if raw.get("format") != PORTABLE_FORMAT:
        return None
    out: dict[str, Any] = {"format": PORTABLE_FORMAT}
    for k, v in raw.items():
        if k == "format":
            continue
        try:
            out[k] = loads_json(v)
        except ValueError:  # not JSON, nested too deeply
            raise SpatError(f"{path}: metadata field {k!r} is not JSON") from None
    return out


def _load_portable(path: Path, meta: dict[str, Any]) -> Classifier:
    try:
        shape = [int(v) for v in meta["input_shape"]]
        scale = meta.get("cosine_scale")
        model = build_model(
            str(meta["architecture"]), num_classes=int(meta["num_classes"]),
            in_channels=shape[0], image_size=(shape[1], shape[2]), mean=meta["mean"],
            std=meta["std"], head=str(meta["head"]),
            cosine_scale=float(scale) if scale is not None else 8.0,
            cosine_bias=bool(meta.get("cosine_bias", True)),
        )
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise SpatError(f"{path}: incomplete spat model metadata ({type(e).__name__}: {e})"
                        ) from None
    load_state_into(model, read_weights(path), str(path))
    return model


def load_model(
    source: str | os.PathLike[str],
    weights: str | os.PathLike[str] | None = None,
    *,
    cosine_scale: float | None = None,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """Any classifier spat can evaluate, in eval mode on ``device``.

    ``source`` is one of:

    * a portable spat model file (``spat export``): rebuilt from its metadata, no run needed;
    * ``"official-trades"`` / ``"official-spat"`` with ``weights`` an official TRADES/SPAT
      checkpoint (WideResNet or ResNet-18, architecture read from the keys and shapes);
      ``official-spat`` gives the cosine head with scale ``cosine_scale`` (logits s·z;
      default :data:`OFFICIAL_SPAT_SCALE`, the official training's s). ``cosine_scale`` applies
      to ``official-spat`` only: any other source has no head for it to scale, or records its
      own s, and is refused with it;
    * ``"package.module:attr"``: an ``nn.Module`` instance, a class, or a factory called with no
      arguments; ``weights`` (optional) is loaded into it strictly. When the module is a spat
      :class:`Classifier` and the weights are in an official layout, the keys are mapped.

    The model must map images in [0, 1], shape (N, C, H, W), to logits (N, K).
    """
    src = os.fspath(source)
    if cosine_scale is not None and src != "official-spat":
        why = ("official-trades has a linear head" if src == "official-trades" else
               f"{src} sets its own head" + (" (a model file records its s)"
                                              if src.endswith(_SAFETENSORS_SUFFIXES) else ""))
        raise SpatError(f"--cosine-scale only applies to --model official-spat (the scale s of "
                        f"its cosine head); {why}")
    if cosine_scale is None:
        cosine_scale = OFFICIAL_SPAT_SCALE
    COSINE_SCALE.check(cosine_scale, "cosine scale")
    if src in OFFICIAL_LAYOUTS:
        if weights is None:
            raise SpatError(f"--model {src} needs --weights (an official checkpoint file)")
        sd = read_weights(weights)
        if official_layout(sd) is None:
            raise SpatError(f"{weights} is not in an official TRADES/SPAT layout (expected "
                            f"conv1/block1.layer.0.*/fc.* or conv1/layer1.0.*/linear.*)")
        model: nn.Module
        model, mapped, _ = convert_official(sd, head=OFFICIAL_LAYOUTS[src],
                                            cosine_scale=cosine_scale)
        load_state_into(model, mapped, str(weights))
    elif Path(src).is_file() or src.endswith(_SAFETENSORS_SUFFIXES):
        path = Path(src)
        if not path.is_file():
            raise SpatError(f"model file not found: {path}")
        meta = read_portable_metadata(path)
        if meta is None:
            raise SpatError(f"{path} is not a spat model file (no spat metadata); for a plain "
                            f"weights file give --model package.module:factory --weights FILE, "
                            f"or --model official-trades/official-spat")
        model = _load_portable(path, meta)
    else:
        model = instantiate(import_object(src), src)
        if weights is not None:
            sd = read_weights(weights)
            if isinstance(model, Classifier) and official_layout(sd) is not None:
                _, sd, _ = convert_official(
                    sd, head=model_info(model)["head"],
                    cosine_scale=model_info(model)["cosine_scale"] or OFFICIAL_SPAT_SCALE)
            load_state_into(model, sd, str(weights))
    return model.to(device).eval()
