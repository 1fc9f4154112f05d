"""From a :class:`~spat.config.TrainConfig` to the objects it names, and a run back.

:func:`load_data`, :func:`model_for` and :func:`method_for` build the data, the network and the
training method of a configuration through the registries; :func:`load_run` rebuilds a trained
run's model from its checkpoint as a :class:`Run`; :class:`TrainResult` is what a finished
training reports (``RUN/summary.json``), read back by :func:`read_summary`. Training itself
(writing run directories) is :func:`spat.train.training.train`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spat import checkpoint as ckpt
from spat.config import TrainConfig, config_from_dict
from spat.data import DataBundle, DatasetInfo, load_dataset
from spat.data.subset import subset_split
from spat.errors import SpatError
from spat.methods import ThreatModel, build_method, method_class
from spat.models import build_model


def load_data(cfg: TrainConfig) -> DataBundle:
    """The dataset of ``cfg`` with its validation split, optionally cut to ``train_subset``."""
    data = load_dataset(cfg.dataset, data_dir=cfg.data_dir, val_size=cfg.val_size,
                        seed=cfg.seed, download=cfg.download)
    if cfg.train_subset is not None and cfg.train_subset < len(data.train):
        # the one subset rule (spat.data.subset), seeded by the run's seed
        data = dataclasses.replace(data, train=subset_split(data.train, cfg.train_subset,
                                                            seed=cfg.seed))
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


#: The file of a run that holds its :class:`TrainResult`.
SUMMARY = "summary.json"


@dataclass(frozen=True)
class TrainResult:
    """What a finished training reports: ``spat.train(...)`` returns it and ``RUN/summary.json``
    holds it (:meth:`to_dict`, keys in field order), read back by :func:`read_summary`.

    ``run_dir``: the run directory; ``checkpoint``: the best-by-validation checkpoint the final
    test used; ``epochs``: epochs trained; ``best_epoch``: the (1-based) epoch of that
    checkpoint; ``test_examples``, ``test_clean_acc``, ``test_attack`` (``PGD-<test_steps>``),
    ``test_eps``, ``test_robust_acc``: the final test; ``world_size``: processes of the session
    that ran the final test; ``train_seconds_this_session``: the training time of that session
    (a resumed run counts only its own); ``last_epoch``: the last epoch's metrics record (None
    without epochs); ``guard``: what the collapse guard reported, epoch by epoch
    (:mod:`spat.train.guard`; empty: nothing, and in summaries written before it existed).
    """

    run_dir: Path
    checkpoint: Path
    epochs: int
    best_epoch: int
    test_examples: int
    test_clean_acc: float
    test_attack: str
    test_eps: float
    test_robust_acc: float
    world_size: int
    train_seconds_this_session: float
    last_epoch: dict[str, Any] | None
    guard: tuple[dict[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of ``summary.json`` (paths as strings, ``guard`` as a list)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out.update(run_dir=str(self.run_dir), checkpoint=str(self.checkpoint),
                   guard=list(self.guard))
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> TrainResult:
        """A summary object (as :meth:`to_dict` gives), every field checked; a one-line
        :class:`SpatError` naming ``where`` otherwise. Unknown keys are ignored."""
        from spat.validation import check_summary, require

        d = check_summary(data, where)
        require(d, "checkpoint", str, where=where)
        require(d, "world_size", int, where=where, check=lambda v: v >= 1, expected=">= 1")
        require(d, "train_seconds_this_session", float, where=where, check=lambda v: v >= 0,
                expected=">= 0")
        if "last_epoch" not in d:
            raise SpatError(f"{where}: missing field 'last_epoch'")
        if d["last_epoch"] is not None and not isinstance(d["last_epoch"], dict):
            raise SpatError(f"{where}: field 'last_epoch' must be an object or null")
        guard = d.get("guard", [])
        if not isinstance(guard, list) or not all(isinstance(g, dict) for g in guard):
            raise SpatError(f"{where}: field 'guard' must be a list of objects")
        return cls(run_dir=Path(d["run_dir"]), checkpoint=Path(d["checkpoint"]),
                   epochs=d["epochs"], best_epoch=d["best_epoch"],
                   test_examples=d["test_examples"], test_clean_acc=float(d["test_clean_acc"]),
                   test_attack=d["test_attack"], test_eps=float(d["test_eps"]),
                   test_robust_acc=float(d["test_robust_acc"]), world_size=d["world_size"],
                   train_seconds_this_session=float(d["train_seconds_this_session"]),
                   last_epoch=d["last_epoch"], guard=tuple(guard))


def read_summary(run_dir: str | os.PathLike[str]) -> TrainResult:
    """The :class:`TrainResult` in ``run_dir/summary.json``; a one-line :class:`SpatError` when
    it is missing, unreadable or not a valid summary. The one reader of that file."""
    from spat.validation import read_json_object

    path = Path(run_dir) / SUMMARY
    if not path.is_file():
        raise SpatError(f"{path} not found (the run has not finished its final test)")
    return TrainResult.from_dict(read_json_object(path, what="run summary"), str(path))


def read_summary_or_none(run_dir: str | os.PathLike[str]) -> TrainResult | None:
    """:func:`read_summary`, or None when the run has no valid summary (not finished, or a
    damaged file: the final test of a resume writes it again)."""
    try:
        return read_summary(run_dir)
    except SpatError:
        return None


@dataclass(frozen=True)
class Run:
    """A trained run loaded back by :func:`load_run`.

    ``model``: the network with the checkpoint's weights, in eval mode; ``config``: the run's
    resolved training configuration; ``info``: its data description (classes, image shape,
    normalisation); ``summary``: the run's :class:`TrainResult` (``summary.json``: final test
    accuracies) or None when the run has not finished (or the file is damaged); ``run_dir``:
    the run directory; ``checkpoint``: the checkpoint folder loaded; ``epoch``: the number of
    epochs trained when that checkpoint was written (None if the checkpoint does not say).
    """

    model: nn.Module
    config: TrainConfig
    info: DatasetInfo
    summary: TrainResult | None
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
    from spat.validation import check_dataset_info, check_state, read_json_object

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
    summary = read_summary_or_none(run_dir)  # unfinished or damaged: the weights are good
    epoch = int(state["epoch"]) + 1 if "epoch" in state else None
    return Run(model=model, config=cfg, info=info, summary=summary, run_dir=run_dir,
               checkpoint=folder, epoch=epoch)
