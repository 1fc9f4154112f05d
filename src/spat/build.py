"""From a :class:`~spat.config.TrainConfig` to the objects it names, and a run back.

:func:`load_data`, :func:`model_for` and :func:`method_for` build the data, the network and the
training method of a configuration through the registries; :func:`load_run` rebuilds a trained
run's model from its checkpoint as a :class:`Run`. Training itself (writing run directories) is
:func:`spat.train.run.train`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spat import checkpoint as ckpt
from spat.config import TrainConfig, config_from_dict
from spat.data import DataBundle, DatasetInfo, Split, load_dataset
from spat.errors import SpatError
from spat.methods import ThreatModel, build_method, method_class
from spat.models import build_model


def load_data(cfg: TrainConfig) -> DataBundle:
    """The dataset of ``cfg`` with its validation split, optionally cut to ``train_subset``."""
    data = load_dataset(cfg.dataset, data_dir=cfg.data_dir, val_size=cfg.val_size,
                        seed=cfg.seed, download=cfg.download)
    if cfg.train_subset is not None and cfg.train_subset < len(data.train):
        g = torch.Generator().manual_seed(cfg.seed)
        idx = torch.randperm(len(data.train), generator=g)[: cfg.train_subset]
        data = dataclasses.replace(
            data, train=Split(images=data.train.images[idx], labels=data.train.labels[idx])
        )
    return data


def model_for(cfg: TrainConfig, info: DatasetInfo) -> nn.Module:
    """The model of ``cfg`` for the data described by ``info`` (normalisation inside)."""
    assert cfg.model is not None and cfg.head is not None
    return build_model(cfg.model, num_classes=info.num_classes, in_channels=info.channels,
                       image_size=(info.height, info.width), mean=info.mean, std=info.std,
                       head=cfg.head, cosine_scale=cfg.cosine_scale)


def method_for(cfg: TrainConfig) -> Callable[..., Any]:
    """The training method of a resolved ``cfg``: its class with the config's hyperparameters
    (a resolved config holds exactly the method's own)."""
    assert cfg.eps is not None and cfg.step_size is not None and cfg.steps is not None
    threat = ThreatModel(eps=cfg.eps, step_size=cfg.step_size, steps=cfg.steps, norm=cfg.norm,
                         init=cfg.init or method_class(cfg.method).default_init)
    return build_method(cfg.method, threat=threat, **cfg.hyperparameters)


@dataclass(frozen=True)
class Run:
    """A trained run loaded back by :func:`load_run`.

    ``model``: the network with the checkpoint's weights, in eval mode; ``config``: the run's
    resolved training configuration; ``info``: its data description (classes, image shape,
    normalisation); ``summary``: ``summary.json`` (final test accuracies) or None when the run
    has not finished; ``run_dir``: the run directory; ``checkpoint``: the checkpoint folder
    loaded; ``epoch``: the number of epochs trained when that checkpoint was written (None if
    the checkpoint does not say).
    """

    model: nn.Module
    config: TrainConfig
    info: DatasetInfo
    summary: dict[str, Any] | None
    run_dir: Path
    checkpoint: Path
    epoch: int | None


def load_run(path: str | os.PathLike[str], which: str = "best",
             device: str | torch.device = "cpu") -> Run:
    """The model of a run directory or checkpoint folder, in eval mode on ``device``, with its
    configuration, data description and summary.

    ``which``: ``best`` (by validation robust accuracy), ``last`` or ``epoch_NNNN``. Loading
    uses safetensors for weights and ``weights_only=True`` for the rest, so a checkpoint can
    never execute code; every field read is validated (one-line :class:`SpatError`).
    """
    from spat.validation import check_dataset_info, check_state, check_summary, read_json_object

    folder = ckpt.resolve(path, which)
    state = ckpt.load_state(folder)
    where = str(folder / ckpt.STATE)
    if not isinstance(state.get("config"), dict):
        raise SpatError(f"checkpoint state {where} holds no training config")
    check_state(state, where, for_resume=False)
    cfg = config_from_dict(state["config"], source=where)
    try:
        cfg = cfg.resolved()  # ranges and names too (a resolved config stays as it is)
    except SpatError as e:
        raise SpatError(f"{where}: training config: {e}") from None
    run_dir = folder.parent.parent
    data_json = run_dir / "data.json"
    if data_json.exists():
        info = check_dataset_info(read_json_object(data_json, what="run data description"),
                                  DatasetInfo, str(data_json))
    else:
        info = load_dataset(cfg.dataset, data_dir=cfg.data_dir).info
    model = model_for(cfg, info)
    weights = ckpt.load_weights(folder)
    ckpt.check_compatible(model, weights, state, folder, cfg=cfg, num_classes=info.num_classes)
    model.load_state_dict(weights)
    model.to(device).eval()
    summary_path = run_dir / "summary.json"
    summary: dict[str, Any] | None = None
    if summary_path.is_file():
        try:
            summary = check_summary(read_json_object(summary_path, what="run summary"),
                                    str(summary_path))
        except SpatError:  # an unfinished or damaged run: the weights are still good
            summary = None
    epoch = int(state["epoch"]) + 1 if "epoch" in state else None
    return Run(model=model, config=cfg, info=info, summary=summary, run_dir=run_dir,
               checkpoint=folder, epoch=epoch)
