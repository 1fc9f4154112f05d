"""SVHN (cropped digits) from the official MATLAB files (torchvision's layout)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spat.data.files import (
    existing_paths,
    files_ok,
    one_line,
    remove_new_paths,
    require_file,
    verify_md5,
)
from spat.data.types import DIGIT_CLASSES, RawDataset
from spat.errors import SpatError

SVHN_MD5 = {
    "train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373",
    "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3",
}


def _read_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) ``uint8`` and labels (N,) ``int64`` from one SVHN ``.mat`` file.

    ``X`` is (32, 32, 3, N) with axes (row, column, channel, example); ``y`` is (N, 1) with the
    digit 0 stored as label 10, mapped here to 0.
    """
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as e:  # any parse failure means a bad file
        raise SpatError(f"cannot read {path}: not a MATLAB v5 file ({one_line(e, None)})") from e
    if "X" not in mat or "y" not in mat:
        raise SpatError(f"cannot read {path}: expected variables 'X' and 'y'")
    x, y = mat["X"], np.asarray(mat["y"]).reshape(-1)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[2] != 3:
        raise SpatError(f"cannot read {path}: 'X' must be uint8 (H, W, 3, N), found {x.dtype} "
                        f"{x.shape}")
    if len(y) != x.shape[3]:
        raise SpatError(f"cannot read {path}: {x.shape[3]} images but {len(y)} labels")
    labels = y.astype(np.int64)
    labels[labels == 10] = 0
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise SpatError(f"cannot read {path}: labels must be in 1..10 (10 is the digit 0), found "
                        f"{int(y.min())}..{int(y.max())}")
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)), labels


def svhn_files_ok(root: str | Path) -> bool:
    """Whether both official files are present in ``root`` with the right md5."""
    return files_ok({Path(root) / name: md5 for name, md5 in SVHN_MD5.items()})


def download_svhn(root: str | Path) -> None:
    """Fetch the train and test files into ``root`` with torchvision (it verifies the md5s)."""
    from torchvision.datasets import SVHN
    from torchvision.datasets.utils import download_url

    before = existing_paths(Path(root))
    try:
        for split in ("train", "test"):
            url, name, md5 = SVHN.split_list[split]
            download_url(url, str(root), name, md5)
    except Exception as e:  # network or integrity failures
        remove_new_paths(Path(root), before)  # the partial archive and its extracts
        raise SpatError(f"download of svhn into {root} failed: {one_line(e, None)}") from e


def load_svhn(root: str | Path, *, verify: bool = True) -> RawDataset:
    """SVHN from ``<root>/train_32x32.mat`` and ``<root>/test_32x32.mat``.

    73,257 training and 26,032 test images, (N, 3, 32, 32) ``uint8`` RGB, classes "0".."9"
    (the file's label 10 is the digit 0). With ``verify`` (always on in ``load_dataset``) each
    file's md5 is checked against the official value; ``verify=False`` is for small files in the
    same format (tests). Augmentation ``"none"``: the standard SVHN adversarial-training setup
    uses no random crop or flip (a flip changes a digit's meaning). Family ``"svhn"``.
    """
    root = Path(root)
    hint = f"put the official files in {root}, or pass download=True (--download)"
    arrays = []
    for name, md5 in SVHN_MD5.items():
        path = require_file(root / name, "svhn", hint)
        if verify:
            verify_md5(path, md5)
        arrays += _read_mat(path)
    return RawDataset(
        name="svhn",
        class_names=DIGIT_CLASSES,
        family="svhn",
        augment="none",
        train_images=arrays[0],
        train_labels=arrays[1],
        test_images=arrays[2],
        test_labels=arrays[3],
    )
