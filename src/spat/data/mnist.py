"""MNIST and Fashion-MNIST from the official gzip-compressed IDX files (torchvision's layout).

Files are read in place and never written to (torchvision would decompress them next to the
archives), so a read-only data folder works.
"""

from __future__ import annotations

import gzip
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
from spat.errors import SpatError, unknown_name

IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions

TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
TRAIN_LABELS = "train-labels-idx1-ubyte.gz"
TEST_IMAGES = "t10k-images-idx3-ubyte.gz"
TEST_LABELS = "t10k-labels-idx1-ubyte.gz"

# which -> (folder under the data root, official md5 of each file)
MNIST_FILES: dict[str, tuple[str, dict[str, str]]] = {
    "mnist": ("MNIST", {
        TRAIN_IMAGES: "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        TRAIN_LABELS: "d53e105ee54ea40749a09fcbcd1e9432",
        TEST_IMAGES: "9fb629c4189551a2d022fa330f9573f3",
        TEST_LABELS: "ec29112dd5afa0611ce80d1b7f02629c",
    }),
    "fashion_mnist": ("FashionMNIST", {
        TRAIN_IMAGES: "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        TRAIN_LABELS: "25c81989df183df01b3e8a0aad5dffbe",
        TEST_IMAGES: "bef4ecab320f06d8554ea6380940ec79",
        TEST_LABELS: "bb300cfdad3c16e7a12a480ee83cd310",
    }),
}

FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
CLASS_NAMES = {"mnist": DIGIT_CLASSES, "fashion_mnist": FASHION_CLASSES}


def read_idx(path: Path) -> np.ndarray:
    """Parse a gzip-compressed IDX file of unsigned bytes.

    Label files (magic 2049, header ``>II`` magic, count) give a ``uint8`` array (count,);
    image files (magic 2051, header ``>IIII`` magic, count, rows, cols) give (count, rows, cols).
    A wrong magic number or length raises ``SpatError`` naming the file.
    """
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise SpatError(f"cannot read {path}: not a valid gzip file ({one_line(e, None)})") from e
    if len(data) < 8:
        raise SpatError(f"cannot read {path}: too short for an IDX header")
    magic = int.from_bytes(data[0:4], "big")
    count = int.from_bytes(data[4:8], "big")
    if magic == IDX_LABELS_MAGIC:
        offset, shape = 8, (count,)
    elif magic == IDX_IMAGES_MAGIC and len(data) >= 16:
        rows = int.from_bytes(data[8:12], "big")
        cols = int.from_bytes(data[12:16], "big")
        offset, shape = 16, (count, rows, cols)
    else:
        raise SpatError(f"cannot read {path}: IDX magic number {magic}, expected "
                        f"{IDX_LABELS_MAGIC} (labels) or {IDX_IMAGES_MAGIC} (images)")
    size = int(np.prod(shape))
    if len(data) != offset + size:
        raise SpatError(f"cannot read {path}: {len(data) - offset} data bytes, the header says "
                        f"{size}")
    # copy: a writable array that owns its memory (np.frombuffer on bytes is read-only)
    return np.frombuffer(data, dtype=np.uint8, count=size, offset=offset).reshape(shape).copy()


def mnist_dir(root: str | Path, which: str) -> Path:
    """``<root>/MNIST/raw`` or ``<root>/FashionMNIST/raw``."""
    if which not in MNIST_FILES:
        raise unknown_name("MNIST variant", which, list(MNIST_FILES))
    return Path(root) / MNIST_FILES[which][0] / "raw"


def mnist_files_ok(root: str | Path, which: str) -> bool:
    """Whether all four official files of ``which`` are present with the right md5."""
    raw = mnist_dir(root, which)
    return files_ok({raw / name: md5 for name, md5 in MNIST_FILES[which][1].items()})


def download_mnist(root: str | Path, which: str) -> None:
    """Fetch ``which`` into ``<root>/<folder>/raw`` with torchvision (it verifies the md5s)."""
    from torchvision import datasets

    cls = datasets.MNIST if which == "mnist" else datasets.FashionMNIST
    before = existing_paths(Path(root))
    Path(root).mkdir(parents=True, exist_ok=True)
    try:
        cls(str(root), train=True, download=True)
    except Exception as e:  # network or integrity failures
        remove_new_paths(Path(root), before)  # the partial archive and its extracts
        raise SpatError(f"download of {which} into {root} failed: {one_line(e, None)}") from e


def load_mnist(root: str | Path, which: str = "mnist", *, verify: bool = True) -> RawDataset:
    """MNIST (``which="mnist"``) or Fashion-MNIST (``"fashion_mnist"``) from ``root``.

    Reads ``<root>/MNIST/raw/*.gz`` or ``<root>/FashionMNIST/raw/*.gz``: 60,000 training and
    10,000 test images, (N, 1, 28, 28) ``uint8``, 10 classes. With ``verify`` each file's md5 is
    checked against the official value first (cached per file). A missing file or a mismatch is
    a ``SpatError`` naming the file. No augmentation; family ``"mnist"``.
    """
    raw = mnist_dir(root, which)
    md5s = MNIST_FILES[which][1]
    hint = f"put the official files in {raw}, or pass download=True (--download)"
    arrays = {}
    for name, md5 in md5s.items():
        path = require_file(raw / name, which, hint)
        if verify:
            verify_md5(path, md5)
        arrays[name] = read_idx(path)
    parts = []
    for images_name, labels_name in ((TRAIN_IMAGES, TRAIN_LABELS), (TEST_IMAGES, TEST_LABELS)):
        images, labels = arrays[images_name], arrays[labels_name]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise SpatError(f"{raw / images_name} and {raw / labels_name} do not match: "
                            f"{images.shape} images, {labels.shape} labels")
        if labels.size and int(labels.max()) >= 10:
            raise SpatError(f"{raw / labels_name} has label {int(labels.max())}, expected 0..9")
        parts += [images[:, None, :, :], labels.astype(np.int64)]
    return RawDataset(
        name=which,
        class_names=CLASS_NAMES[which],
        family="mnist",
        augment="none",
        train_images=parts[0],
        train_labels=parts[1],
        test_images=parts[2],
        test_labels=parts[3],
    )
