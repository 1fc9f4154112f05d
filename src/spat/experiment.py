"""Build everything from a :class:`TrainConfig` through the registries, run it, load it back.

This is the library entry point behind ``spat train``: :func:`train` validates the whole
configuration (names, ranges, data files) *before* creating a run directory, so bad input leaves
nothing behind; then it writes ``config.json``, ``env.json``, ``metrics.jsonl``,
``checkpoints/`` and ``summary.json`` in the run directory.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spat import __version__
from spat import checkpoint as ckpt
from spat.data import DataBundle, DatasetInfo, Split, load_dataset
from spat.errors import SpatError
from spat.methods import ThreatModel, build_method
from spat.models import build_model
from spat.train.config import TrainConfig, config_from_dict
from spat.train.distributed import SINGLE, DistContext
from spat.utils.io import atomic_write_text
from spat.utils.rng import seed_everything

Log = Callable[[str], None]


def resolve_device(name: str, dist: DistContext = SINGLE) -> torch.device:
    """``auto``: CUDA when present (the rank's local GPU under torchrun), else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise SpatError("device 'cuda' requested but no CUDA GPU is available")
        return torch.device("cuda", dist.local_rank)
    if name == "mps" and not torch.backends.mps.is_available():
        raise SpatError("device 'mps' requested but MPS is not available")
    return torch.device(name)


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
    """The training method of a resolved ``cfg``."""
    assert cfg.eps is not None and cfg.step_size is not None and cfg.steps is not None
    threat = ThreatModel(eps=cfg.eps, step_size=cfg.step_size, steps=cfg.steps, norm=cfg.norm,
                         init=cfg.init or "uniform")
    return build_method(cfg.method, threat=threat, beta=cfg.beta,
                        self_paced_ce=cfg.self_paced_ce, m=cfg.m, hcp_ecp=cfg.hcp_ecp, n=cfg.n)


def check_compatible(model: nn.Module, weights: dict[str, torch.Tensor], state: dict[str, Any],
                     where: Path | str) -> None:
    """Refuse a checkpoint of another architecture or number of classes, in one line."""
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    extra = sorted(set(weights) - set(own))
    wrong = sorted(k for k in set(own) & set(weights) if own[k].shape != weights[k].shape)
    if missing or extra or wrong:
        cfg = state.get("config", {})
        detail = (f"missing {missing[:2]}" if missing else f"unexpected {extra[:2]}" if extra
                  else f"shape of {wrong[0]} is {tuple(weights[wrong[0]].shape)}, "
                       f"expected {tuple(own[wrong[0]].shape)}")
        raise SpatError(
            f"checkpoint {where} does not fit this model (it was trained as model "
            f"{cfg.get('model')!r}, head {cfg.get('head')!r}, {state.get('num_classes')} classes; "
            f"{detail})"
        )


def environment(device: torch.device) -> dict[str, Any]:
    """Versions, device and git commit: recorded beside every result."""
    import numpy

    env: dict[str, Any] = {
        "spat": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else
        platform.processor() or platform.machine(),
        "cuda": torch.version.cuda,
        "cpu_threads": torch.get_num_threads(),
        "git_commit": _git_commit(),
        "argv": sys.argv,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    try:
        import torchvision

        env["torchvision"] = torchvision.__version__
    except ImportError:  # pragma: no cover
        pass
    return env


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=False)
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--", "."],
                               capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def default_run_name(cfg: TrainConfig) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{stamp}_{cfg.dataset}_{cfg.model}_{cfg.method}_s{cfg.seed}"


def train(
    cfg: TrainConfig,
    *,
    resume: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
    dist: DistContext = SINGLE,
    log: Log = print,
) -> dict[str, Any]:
    """Train a model as ``cfg`` says (or resume the run at ``resume``); returns the summary.

    Everything is validated before the run directory is created: an error leaves no directory.
    """
    from spat.train.loop import Trainer, evaluate_split

    if resume is not None:
        run_dir = Path(resume)
        cfg_path = run_dir / "config.json"
        if not cfg_path.is_file():
            raise SpatError(f"cannot resume: {cfg_path} not found")
        saved = config_from_dict(json.loads(cfg_path.read_text()), source=str(cfg_path))
        cfg = dataclasses.replace(saved, device=cfg.device, epochs=max(saved.epochs or 0,
                                                                       cfg.epochs or 0) or None)
    cfg = cfg.resolved()
    device = resolve_device(cfg.device, dist)
    seed_everything(cfg.seed, deterministic=cfg.deterministic)
    data = load_data(cfg)
    model = model_for(cfg, data.info).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    method = method_for(cfg)
    if resume is None:
        run_dir = Path(cfg.out_dir) / (cfg.name or default_run_name(cfg))
        if run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
            raise SpatError(f"run directory {run_dir} already exists "
                            f"(use --resume {run_dir} to continue it or --overwrite to replace it)")
    trainer = Trainer(cfg, data, model, method, device, run_dir=run_dir, dist=dist,
                      progress=progress, log=log)
    if resume is not None:
        folder = ckpt.resolve(run_dir, "last")
        trainer.load(folder)
        log(f"resuming {run_dir} from {folder.name} (epoch {trainer.start_epoch + 1} of "
            f"{cfg.epochs})")
    elif dist.is_main:
        if run_dir.exists() and overwrite:
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.json", json.dumps(cfg.to_dict(), indent=2))
        atomic_write_text(run_dir / "env.json", json.dumps(environment(device), indent=2))
        atomic_write_text(run_dir / "data.json", json.dumps(_data_record(data), indent=2))
    dist.barrier()
    t0 = time.perf_counter()
    history = trainer.fit()
    train_seconds = time.perf_counter() - t0
    if not dist.is_main:
        return {}
    # Test: the best-by-validation checkpoint, clean and PGD-test_steps at the training ε.
    best = ckpt.resolve(run_dir, "best")
    model.load_state_dict(ckpt.load_weights(best))
    test = data.test
    if cfg.test_subset is not None and cfg.test_subset < len(test):
        idx = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))
        idx = idx[: cfg.test_subset]
        test = Split(images=test.images[idx], labels=test.labels[idx])
    preds = evaluate_split(model, test, cfg, device, cfg.test_steps,
                           seed=cfg.seed + 12345)
    attack = next(iter(preds.adversarial))
    summary = {
        "run_dir": str(run_dir),
        "checkpoint": str(best),
        "epochs": cfg.epochs,
        "best_epoch": trainer.best_epoch + 1,
        "test_examples": len(preds),
        "test_clean_acc": preds.accuracy(None),
        "test_attack": attack,
        "test_eps": cfg.eps,
        "test_robust_acc": preds.accuracy(attack),
        "train_seconds_this_session": train_seconds,
        "last_epoch": history[-1] if history else None,
    }
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2))
    return summary


def _data_record(data: DataBundle) -> dict[str, Any]:
    info = data.info
    return {**dataclasses.asdict(info), "train": len(data.train), "val": len(data.val),
            "test": len(data.test)}


def load_run(path: str | os.PathLike[str], which: str = "best", device: str | torch.device = "cpu"
             ) -> tuple[nn.Module, TrainConfig, dict[str, Any]]:
    """The model of a run directory or checkpoint folder, in eval mode, with its config.

    Returns ``(model, config, state)``; loading uses safetensors for weights and
    ``weights_only=True`` for the rest, so a checkpoint can never execute code.
    """
    folder = ckpt.resolve(path, which)
    state = ckpt.load_state(folder)
    cfg = config_from_dict(state["config"], source=str(folder / ckpt.STATE))
    run_dir = folder.parent.parent
    data_json = run_dir / "data.json"
    if data_json.exists():
        d = json.loads(data_json.read_text())
        info = DatasetInfo(**{f.name: (tuple(d[f.name]) if isinstance(d[f.name], list)
                                       else d[f.name]) for f in dataclasses.fields(DatasetInfo)})
    else:
        info = load_dataset(cfg.dataset, data_dir=cfg.data_dir).info
    model = model_for(cfg, info)
    weights = ckpt.load_weights(folder)
    check_compatible(model, weights, state, folder)
    model.load_state_dict(weights)
    model.to(device).eval()
    return model, cfg, {**state, "info": info, "folder": str(folder)}
