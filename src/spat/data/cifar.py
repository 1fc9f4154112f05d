"""CIFAR-10 and CIFAR-100 from the official python-pickle release (torchvision's layout).

The batch files are pickles, so they are read with a restricted unpickler that builds only
plain containers and numpy arrays (see :class:`spat.data.files.RestrictedUnpickler`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from spat.data.files import (
    existing_paths,
    files_ok,
    one_line,
    remove_new_paths,
    require_file,
    safe_unpickle,
    verify_md5,
)
from spat.data.types import RawDataset
from spat.errors import SpatError, unknown_name

CIFAR_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
CIFAR_MD5: dict[str, dict[str, str]] = {
    "cifar10": {
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "test_batch": "40351d587109b95175f43aff81a1287e",
        "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
    },
    "cifar100": {
        "train": "16019d7e3df5f24257cddd939b257f8d",
        "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
        "meta": "7973b15100ade9c7d40fb424638fde48",
    },
}
# which -> (training files, test files, meta file, label key, class-name key)
_LAYOUT = {
    "cifar10": (tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), "batches.meta",
                "labels", "label_names"),
    "cifar100": (("train",), ("test",), "meta", "fine_labels", "fine_label_names"),
}
_NUM_CLASSES = {"cifar10": 10, "cifar100": 100}
_PIXELS = 3 * 32 * 32


def _text(v: Any) -> str:
    return v.decode("latin-1") if isinstance(v, bytes) else str(v)


def _as_dict(obj: Any, path: Path) -> dict[str, Any]:
    """The unpickled dict with its keys as ``str`` (Python 2 pickles give ``bytes`` keys)."""
    if not isinstance(obj, dict):
        raise SpatError(f"cannot read {path}: expected a dict, found {type(obj).__name__}")
    return {_text(k): v for k, v in obj.items()}


def _read_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One batch file: images (N, 3, 32, 32) ``uint8`` and labels (N,) ``int64``.

    Each row of ``data`` holds 3072 bytes: the 1024 red, then green, then blue values of a
    32x32 image, each plane row-major.
    """
    d = _as_dict(safe_unpickle(path), path)
    for key in ("data", label_key):
        if key not in d:
            raise SpatError(f"cannot read {path}: no {key!r} entry (found {sorted(d)})")
    data = d["data"]
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == _PIXELS):
        shape = getattr(data, "shape", None)
        raise SpatError(f"cannot read {path}: 'data' must be a uint8 array of shape "
                        f"(N, {_PIXELS}), found {type(data).__name__} {shape}")
    try:
        labels = np.asarray(d[label_key], dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise SpatError(f"cannot read {path}: {label_key!r} is not a list of integers") from e
    if len(labels) != len(data):
        raise SpatError(f"cannot read {path}: {len(data)} images but {len(labels)} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise SpatError(f"cannot read {path}: labels must be in 0..{num_classes - 1}, found "
                        f"{int(labels.min())}..{int(labels.max())}")
    return data.reshape(-1, 3, 32, 32), labels


def cifar_dir(root: str | Path, which: str) -> Path:
    """``<root>/cifar-10-batches-py`` or ``<root>/cifar-100-python``."""
    if which not in CIFAR_FOLDERS:
        raise unknown_name("CIFAR variant", which, list(CIFAR_FOLDERS))
    return Path(root) / CIFAR_FOLDERS[which]


def cifar_files_ok(root: str | Path, which: str) -> bool:
    """Whether every official file of ``which`` is present with the right md5."""
    folder = cifar_dir(root, which)
    return files_ok({folder / name: md5 for name, md5 in CIFAR_MD5[which].items()})


def download_cifar(root: str | Path, which: str) -> None:
    """Fetch and extract ``which`` into ``root`` with torchvision (it verifies the md5s)."""
    from torchvision import datasets

    cls = datasets.CIFAR10 if which == "cifar10" else datasets.CIFAR100
    before = existing_paths(Path(root))
    Path(root).mkdir(parents=True, exist_ok=True)
    try:
        cls(str(root), train=False, download=True)
    except Exception as e:  # network or integrity failures
        remove_new_paths(Path(root), before)  # the partial archive and its extracts
        raise SpatError(f"download of {which} into {root} failed: {one_line(e, None)}") from e


def _meta_names(path: Path, names_key: str, k: int) -> tuple[str, ...]:
    meta = _as_dict(safe_unpickle(path), path)
    names = meta.get(names_key)
    if not isinstance(names, list) or len(names) != k:
        raise SpatError(f"cannot read {path}: {names_key!r} must list {k} class names")
    return tuple(_text(n) for n in names)


def cifar_class_names(root: str | Path, which: str) -> tuple[str, ...] | None:
    """The class names in ``which``'s meta file under ``root`` (the images are not read), or
    ``None`` when that file is missing or unreadable (loading the data says why)."""
    _, _, meta_file, _, names_key = _LAYOUT[which]
    path = cifar_dir(root, which) / meta_file
    if not path.is_file():
        return None
    try:
        return _meta_names(path, names_key, _NUM_CLASSES[which])
    except SpatError:
        return None


def load_cifar(root: str | Path, which: str = "cifar10", *, verify: bool = True) -> RawDataset:
    """CIFAR-10 (``which="cifar10"``) or CIFAR-100 (``"cifar100"``, fine labels) from ``root``.

    Reads ``<root>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}`` or
    ``<root>/cifar-100-python/{train,test,meta}``: 50,000 training and 10,000 test images,
    (N, 3, 32, 32) ``uint8`` RGB. With ``verify`` (always on in ``load_dataset``) every file's md5
    is checked against the official value before it is unpickled; ``verify=False`` is for small
    files in the same format (tests). Augmentation ``"crop_flip"``; family ``"cifar"``.
    """
    folder = cifar_dir(root, which)
    train_files, test_files, meta_file, label_key, names_key = _LAYOUT[which]
    k = _NUM_CLASSES[which]
    hint = f"put the official python-version files in {folder}, or pass download=True (--download)"
    paths = {name: require_file(folder / name, which, hint) for name in CIFAR_MD5[which]}
    if verify:
        for name, md5 in CIFAR_MD5[which].items():
            verify_md5(paths[name], md5)
    names = _meta_names(paths[meta_file], names_key, k)
    arrays = []
    for files in (train_files, test_files):
        parts = [_read_batch(paths[f], label_key, k) for f in files]
        arrays += [np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])]
    return RawDataset(
        name=which,
        class_names=names,
        family="cifar",
        augment="crop_flip",
        train_images=arrays[0],
        train_labels=arrays[1],
        test_images=arrays[2],
        test_labels=arrays[3],
    )
