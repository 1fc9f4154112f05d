"""The dataset registry and :func:`load_dataset`: loading, the validation split, statistics."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from spat.data.cifar import cifar_class_names, cifar_files_ok, download_cifar, load_cifar
from spat.data.digits import load_digits_data
from spat.data.mnist import CLASS_NAMES as MNIST_CLASS_NAMES
from spat.data.mnist import download_mnist, load_mnist, mnist_files_ok
from spat.data.npz import load_npz, npz_class_names
from spat.data.svhn import download_svhn, load_svhn, svhn_files_ok
from spat.data.types import DIGIT_CLASSES, DataBundle, DatasetInfo, RawDataset, Split
from spat.errors import SpatError, unknown_name

DEFAULT_DATA_DIR = Path("data")

Loader = Callable[[Path | None, bool], RawDataset]


def _root(data_dir: Path | None) -> Path:
    return DEFAULT_DATA_DIR if data_dir is None else data_dir


def _digits(data_dir: Path | None, download: bool) -> RawDataset:
    """scikit-learn digits (offline; ``data_dir`` and ``download`` are ignored)."""
    return load_digits_data()


def _mnist_like(which: str) -> Loader:
    def loader(data_dir: Path | None, download: bool) -> RawDataset:
        root = _root(data_dir)
        if download and not mnist_files_ok(root, which):
            download_mnist(root, which)
        return load_mnist(root, which, verify=True)

    folder = "MNIST" if which == "mnist" else "FashionMNIST"
    loader.__doc__ = f"{which} from ``<data_dir>/{folder}/raw``."
    return loader


def _cifar(which: str) -> Loader:
    def loader(data_dir: Path | None, download: bool) -> RawDataset:
        root = _root(data_dir)
        if download and not cifar_files_ok(root, which):
            download_cifar(root, which)
        return load_cifar(root, which, verify=True)

    loader.__doc__ = f"{which} (python pickles) from ``data_dir``."
    return loader


def _svhn(data_dir: Path | None, download: bool) -> RawDataset:
    """SVHN from ``<data_dir>/{train,test}_32x32.mat``."""
    root = _root(data_dir)
    if download and not svhn_files_ok(root):
        download_svhn(root)
    return load_svhn(root, verify=True)


def _npz(data_dir: Path | None, download: bool) -> RawDataset:
    """The user's arrays; ``data_dir`` is the path of the ``.npz`` file."""
    if data_dir is None:
        raise SpatError("dataset 'npz' needs the path of your .npz file as data_dir "
                        "(--data-dir)")
    if download:
        raise SpatError("dataset 'npz' cannot be downloaded; pass the path of your .npz file")
    return load_npz(data_dir)


DATASETS: dict[str, Loader] = {
    "digits": _digits,
    "mnist": _mnist_like("mnist"),
    "fashion_mnist": _mnist_like("fashion_mnist"),
    "cifar10": _cifar("cifar10"),
    "cifar100": _cifar("cifar100"),
    "svhn": _svhn,
    "npz": _npz,
}


def dataset_names() -> list[str]:
    """The registered dataset names in registry order (``"digits"``, the offline default, first)."""
    return list(DATASETS)


def dataset_class_names(name: str, data_dir: str | Path | None = None
                        ) -> tuple[str, ...] | None:
    """The class names of dataset ``name`` (as :func:`load_dataset` gives them) without loading
    its images: fixed for the digit datasets and Fashion-MNIST, read from CIFAR's meta file or
    the npz file's small arrays; ``None`` when those files are not there (or unreadable), so
    the names are known only once the data is loaded."""
    key = str(name).strip().lower().replace("-", "_")
    if key in ("digits", "svhn"):
        return DIGIT_CLASSES
    if key in MNIST_CLASS_NAMES:
        return MNIST_CLASS_NAMES[key]
    if key in ("cifar10", "cifar100"):
        return cifar_class_names(_root(None if data_dir is None else Path(data_dir)), key)
    if key == "npz":
        return None if data_dir is None else npz_class_names(data_dir)
    raise unknown_name("dataset", str(name), dataset_names())


def val_count(val_size: int | float, n_train: int) -> int:
    """The number of validation examples that ``val_size`` asks for out of ``n_train``.

    An ``int`` (or an integral ``float`` >= 1, e.g. ``5000.0``) is a count; a ``float`` in (0, 1)
    is a fraction of ``n_train``, rounded, at least 1. Negative values, non-integral values
    above 1, and counts that leave no training example raise ``SpatError``.
    """
    if isinstance(val_size, bool) or not isinstance(val_size, numbers.Real):
        raise SpatError(f"validation size must be a count or a fraction, got {val_size!r}")
    if not math.isfinite(val_size) or val_size < 0:
        raise SpatError(f"validation size must be >= 0, got {val_size}")
    if 0 < val_size < 1:
        n_val = max(1, round(val_size * n_train))
    elif float(val_size).is_integer():  # an int, or an integral float such as 5000.0
        n_val = int(val_size)
    else:
        raise SpatError(f"validation size {val_size} is neither a count nor a fraction in (0, 1)")
    if n_val >= n_train and n_val > 0:
        raise SpatError(f"validation split of {n_val} examples is larger than the training set "
                        f"({n_train}); at least one training example must remain")
    return n_val


def split_validation(images: np.ndarray, labels: np.ndarray, n_val: int, seed: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(train_images, train_labels, val_images, val_labels)``: ``n_val`` examples held out.

    The held-out examples are the first ``n_val`` of
    ``torch.randperm(N, generator=torch.Generator().manual_seed(seed))``, so the split is fixed
    by ``seed``; both parts keep the original order. Not stratified.
    """
    n = len(labels)
    if n_val == 0:
        return images, labels, images[:0], labels[:0]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    is_val = np.zeros(n, dtype=bool)
    is_val[perm[:n_val]] = True
    train_idx, val_idx = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    return images[train_idx], labels[train_idx], images[val_idx], labels[val_idx]


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) standard deviation of ``uint8`` (N, C, H, W) images.

    In [0,1] pixel units, computed exactly from a 256-bin histogram per channel (no float copy
    of the data). A channel with zero spread gets std 1.0 so that normalising by it is safe.
    """
    n, c = images.shape[:2]
    values = np.arange(256, dtype=np.float64) / 255.0
    chunk = max(1, (1 << 24) // max(1, int(np.prod(images.shape[2:]))))
    t = torch.from_numpy(np.ascontiguousarray(images))
    means, stds = [], []
    for ch in range(c):
        hist = np.zeros(256, dtype=np.int64)
        for start in range(0, n, chunk):
            part = t[start:start + chunk, ch].reshape(-1)
            hist += torch.bincount(part, minlength=256).numpy()
        total = hist.sum()
        mean = float((hist * values).sum() / total)
        var = float((hist * values**2).sum() / total) - mean**2
        std = math.sqrt(max(var, 0.0))
        means.append(mean)
        stds.append(std if std > 1e-12 else 1.0)
    return tuple(means), tuple(stds)


def _split(images: np.ndarray, labels: np.ndarray) -> Split:
    return Split(images=torch.from_numpy(np.ascontiguousarray(images)),
                 labels=torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64)))


def load_dataset(
    name: str,
    *,
    data_dir: str | Path | None = None,
    val_size: int | float = 0,
    seed: int = 0,
    download: bool = False,
) -> DataBundle:
    """Load dataset ``name`` (see :func:`dataset_names`) as CPU tensors with a validation split.

    ``data_dir``: the folder holding the files in torchvision's layout (default ``./data``;
    ignored by ``"digits"``), or for ``"npz"`` the path of the ``.npz`` file. ``val_size``: a
    count or a fraction in (0, 1) of the training set, held out by a permutation fixed by
    ``seed`` (see :func:`val_count`, :func:`split_validation`). ``download``: fetch missing or
    corrupted official files with torchvision first. Files are always md5-verified.
    ``info.mean``/``info.std`` come from the training split after the validation part is
    removed. Every user-facing failure is a one-line ``SpatError``.
    """
    key = str(name).strip().lower().replace("-", "_")
    if key not in DATASETS:
        raise unknown_name("dataset", str(name), dataset_names())
    raw = DATASETS[key](None if data_dir is None else Path(data_dir), download)
    n_val = val_count(val_size, len(raw.train_labels))
    tr_x, tr_y, va_x, va_y = split_validation(raw.train_images, raw.train_labels, n_val, seed)
    mean, std = channel_stats(tr_x)
    _, c, h, w = tr_x.shape
    info = DatasetInfo(
        name=key,
        num_classes=len(raw.class_names),
        channels=int(c),
        height=int(h),
        width=int(w),
        class_names=tuple(raw.class_names),
        mean=mean,
        std=std,
        augment=raw.augment,
        family=raw.family,
    )
    return DataBundle(info=info, train=_split(tr_x, tr_y), val=_split(va_x, va_y),
                      test=_split(raw.test_images, raw.test_labels))
