"""The dataset registry and :func:`load_dataset`: loading, the validation split, statistics.

Each dataset is one :class:`DatasetRecord` in :data:`DATASETS`: its loader, its train/test
sizes and its threat-model and optimisation defaults (with their source). Adding a dataset is
adding one record.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, replace
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


@dataclass(frozen=True, kw_only=True)
class DatasetDefaults:
    """Threat model and optimisation defaults for a dataset, with where they come from."""

    eps: float
    step_size: float
    steps: int
    epochs: int
    lr: float
    weight_decay: float
    batch_size: int
    model: str
    source: str


@dataclass(frozen=True, kw_only=True)
class DatasetRecord:
    """Everything the package knows about one dataset: ``loader(data_dir, download)``,
    ``sizes`` = (train, test) examples of the official split (``None`` when the user's file
    decides, as for ``npz``; the cost estimate of ``spat study --dry-run`` reads them) and
    ``defaults``, the threat model and optimisation a run gets when it sets none."""

    loader: Loader
    sizes: tuple[int, int] | None
    defaults: DatasetDefaults


# 32x32 colour data: the 8/255 family of the official TRADES/SPAT CIFAR-10 code (ε 0.031,
# η 0.007, K 10; SGD 0.1, wd 2e-4, batch 128, 100 epochs). PGD-AT uses 8/255 and 2/255
# (Madry et al.): configs/ sets those for pgd_at explicitly.
_CIFAR_DEFAULTS = DatasetDefaults(eps=0.031, step_size=0.007, steps=10, epochs=100, lr=0.1,
                                  weight_decay=2e-4, batch_size=128, model="resnet18",
                                  source="official SPAT/TRADES CIFAR-10 code")

#: The registered datasets, one record each, in the order of :func:`dataset_names` (the
#: README's "Datasets and their defaults" explains each default).
DATASETS: dict[str, DatasetRecord] = {
    # scikit-learn digits (8x8, 17 grey levels of 1/16): ε 0.1 is 1.6 grey levels; η 0.025,
    # K 10. The offline default, first.
    "digits": DatasetRecord(loader=_digits, sizes=(1297, 500), defaults=DatasetDefaults(
        eps=0.1, step_size=0.025, steps=10, epochs=30, lr=0.05, weight_decay=5e-4,
        batch_size=64, model="small_cnn",
        source="chosen here so the offline default trains in < 3 min")),
    # MNIST: ε 0.3, η 0.01, K 40 (Madry et al. 1706.06083; TRADES' MNIST script), SmallCNN,
    # lr 0.01.
    "mnist": DatasetRecord(loader=_mnist_like("mnist"), sizes=(60000, 10000),
                           defaults=DatasetDefaults(
        eps=0.3, step_size=0.01, steps=40, epochs=50, lr=0.01, weight_decay=0.0,
        batch_size=128, model="small_cnn", source="Madry et al. / TRADES MNIST")),
    # Fashion-MNIST: ε 0.1 (ε 0.3 destroys most garment images' class evidence), η 0.01, K 20.
    "fashion_mnist": DatasetRecord(loader=_mnist_like("fashion_mnist"), sizes=(60000, 10000),
                                   defaults=DatasetDefaults(
        eps=0.1, step_size=0.01, steps=20, epochs=30, lr=0.01, weight_decay=0.0,
        batch_size=128, model="small_cnn", source="common Fashion-MNIST AT setting")),
    "cifar10": DatasetRecord(loader=_cifar("cifar10"), sizes=(50000, 10000),
                             defaults=_CIFAR_DEFAULTS),
    "cifar100": DatasetRecord(loader=_cifar("cifar100"), sizes=(50000, 10000),
                              defaults=replace(_CIFAR_DEFAULTS, source="as CIFAR-10 (the "
                                               "usual 8/255 protocol)")),
    # SVHN: ε 8/255 with a smaller step (1/255) and lr 0.01, the usual SVHN AT recipe, since
    # lr 0.1 diverges early on SVHN with PGD-AT.
    "svhn": DatasetRecord(loader=_svhn, sizes=(73257, 26032), defaults=DatasetDefaults(
        eps=8 / 255, step_size=1 / 255, steps=10, epochs=50, lr=0.01, weight_decay=5e-4,
        batch_size=128, model="resnet18", source="common SVHN adversarial-training recipe")),
    # a user's own .npz: CIFAR-10's values, the common case of 32x32 colour data; set ε, the
    # model and the budget for other data
    "npz": DatasetRecord(loader=_npz, sizes=None, defaults=replace(
        _CIFAR_DEFAULTS,
        source="as CIFAR-10 (a user's .npz: set eps, model and epochs for other data)")),
}


def dataset_names() -> list[str]:
    """The registered dataset names in registry order (``"digits"``, the offline default, first)."""
    return list(DATASETS)


def dataset_record(name: str) -> DatasetRecord:
    """The record of registered dataset ``name`` (``"fashion-mnist"`` is ``fashion_mnist``);
    an unknown name is a one-line :class:`SpatError` naming the valid ones."""
    key = str(name).strip().lower().replace("-", "_")
    if key not in DATASETS:
        raise unknown_name("dataset", str(name), dataset_names())
    return DATASETS[key]


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
    raw = dataset_record(name).loader(None if data_dir is None else Path(data_dir), download)
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
