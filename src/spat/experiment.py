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
import secrets
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


#: Config fields that define the network a checkpoint's weights belong to.
ARCHITECTURE_FIELDS = ("dataset", "model", "head", "cosine_scale")


def check_compatible(model: nn.Module, weights: dict[str, torch.Tensor], state: dict[str, Any],
                     where: Path | str, *, cfg: TrainConfig | None = None,
                     num_classes: int | None = None) -> None:
    """Refuse a checkpoint of another architecture or number of classes, in one line.

    Compares the weights' names and shapes with ``model``'s; with ``cfg`` also the fields of
    :data:`ARCHITECTURE_FIELDS` recorded in the checkpoint (a cosine head and a linear head have
    the same shapes), and with ``num_classes`` the recorded number of classes.
    """
    saved = state.get("config") if isinstance(state.get("config"), dict) else {}
    assert isinstance(saved, dict)
    if cfg is not None:
        for key in ARCHITECTURE_FIELDS:
            if key in saved and saved[key] != getattr(cfg, key):
                raise SpatError(
                    f"checkpoint {where} was trained with {key.replace('_', ' ')} "
                    f"{saved[key]!r} but the configuration says {getattr(cfg, key)!r} (was the "
                    f"run's config.json edited? a checkpoint only fits the network it was "
                    f"trained as)"
                )
    saved_k = state.get("num_classes")
    if num_classes is not None and saved_k is not None and int(saved_k) != num_classes:
        raise SpatError(f"checkpoint {where} has {saved_k} classes but the data has "
                        f"{num_classes}")
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    extra = sorted(set(weights) - set(own))
    wrong = sorted(k for k in set(own) & set(weights) if own[k].shape != weights[k].shape)
    if missing or extra or wrong:
        detail = (f"missing {missing[:2]}" if missing else f"unexpected {extra[:2]}" if extra
                  else f"shape of {wrong[0]} is {tuple(weights[wrong[0]].shape)}, "
                       f"expected {tuple(own[wrong[0]].shape)}")
        raise SpatError(
            f"checkpoint {where} does not fit this model (it was trained as model "
            f"{saved.get('model')!r}, head {saved.get('head')!r}, {saved_k} classes; "
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
    try:  # the installed version, without importing torchvision (seconds of start-up)
        from importlib.metadata import PackageNotFoundError, version

        env["torchvision"] = version("torchvision")
    except PackageNotFoundError:  # pragma: no cover
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


#: Settings that ``--resume`` takes from the command line; everything else comes from the run.
RESUME_OVERRIDES = ("device", "epochs", "out_dir", "name")


def _resume_config(run_dir: Path, cli: TrainConfig, log: Log) -> TrainConfig:
    """The saved config of ``run_dir`` with the command line's device and (longer) epochs."""
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise SpatError(f"cannot resume {run_dir}: it is not a run directory ({cfg_path} not "
                        f"found)")
    try:
        raw = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SpatError(f"cannot resume: {cfg_path} is corrupted ({type(e).__name__}: "
                        f"{' '.join(str(e).split())})") from None
    if not isinstance(raw, dict):
        raise SpatError(f"cannot resume: {cfg_path} does not hold a JSON object")
    saved = config_from_dict(raw, source=str(cfg_path))
    defaults = TrainConfig()
    ignored = [f.name for f in dataclasses.fields(TrainConfig)
               if f.name not in RESUME_OVERRIDES
               and getattr(cli, f.name) != getattr(defaults, f.name)
               and getattr(cli, f.name) != getattr(saved, f.name)]
    if ignored:
        log(f"note: --resume continues with the run's saved settings; ignoring "
            f"{', '.join(ignored)} from the command line")
    epochs = saved.epochs
    if cli.epochs is not None and saved.epochs is not None and cli.epochs < saved.epochs:
        log(f"note: the run has {saved.epochs} epochs; --epochs {cli.epochs} is ignored "
            f"(--resume can only extend a run)")
    elif cli.epochs is not None:
        epochs = cli.epochs
    return dataclasses.replace(saved, device=cli.device, epochs=epochs)


def _check_new_run_dir(run_dir: Path, overwrite: bool) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise SpatError(f"run directory {run_dir} exists and is not a directory")
    if run_dir.is_dir() and any(run_dir.iterdir()) and not overwrite:
        raise SpatError(f"run directory {run_dir} already exists "
                        f"(use --resume {run_dir} to continue it or --overwrite to replace it)")


def _create_run_dir(run_dir: Path, files: dict[str, str]) -> None:
    """Create ``run_dir`` holding ``files`` (name -> text) atomically.

    The files are written in a temporary sibling folder which is renamed into place, so a crash
    leaves either no run directory or a complete one. An existing run directory (``--overwrite``
    was checked by the caller) is moved aside first and deleted only afterwards.
    """
    parent = run_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".{run_dir.name}.{secrets.token_hex(4)}.tmp"
    tmp.mkdir()
    old: Path | None = None
    try:
        for name, text in files.items():
            atomic_write_text(tmp / name, text)
        if run_dir.exists():
            old = parent / f".{run_dir.name}.old.{secrets.token_hex(4)}.tmp"
            os.rename(run_dir, old)
        os.rename(tmp, run_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not run_dir.exists():
            os.rename(old, run_dir)  # put the old run back
            old = None
        raise
    try:
        fd = os.open(parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _last_checkpoint(run_dir: Path) -> Path | None:
    """The folder ``last.json`` names, or None if the run has no checkpoint yet."""
    root = run_dir / "checkpoints"
    tag = ckpt.read_pointer(root, "last")
    if tag is None:
        return None
    folder = root / tag
    if not (folder / ckpt.WEIGHTS).is_file() or not (folder / ckpt.STATE).is_file():
        raise SpatError(f"cannot resume {run_dir}: {root / 'last.json'} names {tag}, which is "
                        f"missing or incomplete")
    return folder


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

    Everything is validated (names, ranges, data files, the run directory, a resumed run's
    checkpoint) before anything is written: an error leaves no directory and changes no file.
    A new run directory appears atomically, complete with ``config.json``, ``env.json`` and
    ``data.json``. ``resume``: continue from the run's last checkpoint with its saved settings
    (``cfg`` contributes only ``device`` and a larger ``epochs``); a run killed before its first
    checkpoint starts over; a finished run just reports its summary again. Under torchrun
    (``dist``) every rank calls this; rank 0 alone reads and writes the run directory and
    returns the summary, the other ranks return ``{}``.
    """
    from spat.train.loop import Trainer, evaluate_split

    if resume is not None and overwrite:
        raise SpatError("--resume and --overwrite exclude each other (resume continues a run, "
                        "overwrite replaces it)")
    run_dir: Path
    if resume is not None:
        run_dir = Path(resume)
        given = cfg
        cfg = dist.on_main(lambda: _resume_config(run_dir, given, log))
    cfg = cfg.resolved()
    device = resolve_device(cfg.device, dist)
    seed_everything(cfg.seed, deterministic=cfg.deterministic)
    data = load_data(cfg)
    model = model_for(cfg, data.info).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    method = method_for(cfg)
    if resume is None:
        # one name for all ranks (the default name holds the time)
        run_dir = Path(dist.broadcast_object(str(Path(cfg.out_dir) /
                                                 (cfg.name or default_run_name(cfg)))))
        dist.on_main(lambda: _check_new_run_dir(run_dir, overwrite))
    trainer = Trainer(cfg, data, model, method, device, run_dir=run_dir, dist=dist,
                      progress=progress, log=log)
    if resume is not None:
        folder = dist.on_main(lambda: _last_checkpoint(run_dir))
        if folder is not None:
            trainer.load(folder)
            if trainer.start_epoch < (cfg.epochs or 0):
                log(f"resuming {run_dir} from {folder.name} (epoch {trainer.start_epoch + 1} "
                    f"of {cfg.epochs})")
        else:
            log(f"resuming {run_dir}: no checkpoint yet, starting from epoch 1")
        trainer.prepare_resume()

        def record_epochs() -> None:  # --epochs extended the run
            saved = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
            if saved.get("epochs") != cfg.epochs:
                saved["epochs"] = cfg.epochs
                atomic_write_text(run_dir / "config.json", json.dumps(saved, indent=2))

        dist.on_main(record_epochs)
    else:
        files = {"config.json": json.dumps(cfg.to_dict(), indent=2),
                 "env.json": json.dumps(environment(device), indent=2),
                 "data.json": json.dumps(_data_record(data), indent=2)}
        dist.on_main(lambda: _create_run_dir(run_dir, files))
    dist.barrier()
    assert cfg.epochs is not None
    if resume is not None and trainer.start_epoch >= cfg.epochs:
        done = dist.on_main(lambda: _read_summary(run_dir))
        if done is not None:
            log(f"{run_dir} already finished all {cfg.epochs} epochs; its summary:")
            return done if dist.is_main else {}
    t0 = time.perf_counter()
    history = trainer.fit()
    train_seconds = time.perf_counter() - t0
    # Test: the best-by-validation checkpoint, clean and PGD-test_steps at the training ε,
    # sharded over the ranks. Rank 0 loads the weights and broadcasts them.
    best = dist.on_main(lambda: ckpt.resolve(run_dir, "best"))

    def load_best() -> None:
        model.load_state_dict(ckpt.load_weights(best))

    dist.on_main(load_best)
    dist.broadcast_(list(model.state_dict().values()))
    test = data.test
    if cfg.test_subset is not None and cfg.test_subset < len(test):
        idx = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))
        idx = idx[: cfg.test_subset]
        test = Split(images=test.images[idx], labels=test.labels[idx])
    preds = evaluate_split(model, test, cfg, device, cfg.test_steps,
                           seed=cfg.seed + 12345, dist=dist)
    if not dist.is_main:
        return {}
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
        "world_size": dist.world_size,
        "train_seconds_this_session": train_seconds,
        "last_epoch": history[-1] if history else None,
    }
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2))
    return summary


def _read_summary(run_dir: Path) -> dict[str, Any] | None:
    """``summary.json`` of a run, or None when it is missing or unreadable."""
    path = run_dir / "summary.json"
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return summary if isinstance(summary, dict) else None


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
    if not isinstance(state.get("config"), dict):
        raise SpatError(f"checkpoint state {folder / ckpt.STATE} holds no training config")
    cfg = config_from_dict(state["config"], source=str(folder / ckpt.STATE))
    run_dir = folder.parent.parent
    data_json = run_dir / "data.json"
    if data_json.exists():
        try:
            d = json.loads(data_json.read_text(encoding="utf-8"))
            info = DatasetInfo(**{f.name: (tuple(d[f.name]) if isinstance(d[f.name], list)
                                           else d[f.name])
                                  for f in dataclasses.fields(DatasetInfo)})
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
            raise SpatError(f"{data_json} is corrupted ({type(e).__name__}: "
                            f"{' '.join(str(e).split())})") from None
    else:
        info = load_dataset(cfg.dataset, data_dir=cfg.data_dir).info
    model = model_for(cfg, info)
    weights = ckpt.load_weights(folder)
    check_compatible(model, weights, state, folder, cfg=cfg, num_classes=info.num_classes)
    model.load_state_dict(weights)
    model.to(device).eval()
    return model, cfg, {**state, "info": info, "folder": str(folder)}
