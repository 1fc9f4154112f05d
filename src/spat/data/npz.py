"""The user's own image data from one ``.npz`` file."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spat.data.files import one_line
from spat.data.types import RawDataset
from spat.errors import SpatError

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
_CHANNELS = (1, 3)
#: The most classes an ``.npz`` dataset may have. A run records a K×K confusion matrix every
#: epoch and the analysis ranks K(K−1)/2 class pairs, so K = 10,000 (10^8 cells, 0.8 GB per int64
#: matrix) is about the most that stays workable; common benchmarks have 10 to 1,000 classes.
#: Checked before anything of size K is made (a label of 2**31 − 1 would otherwise ask for two
#: billion class names).
MAX_CLASSES = 10_000


def to_nchw(x: np.ndarray, key: str, path: Path) -> np.ndarray:
    """``x`` as (N, C, H, W), from (N, H, W) greyscale, (N, H, W, C) or (N, C, H, W).

    The channel axis is the one of axes 1 and 3 whose size is 1 or 3. If both are (e.g.
    (N, 3, 5, 3)) the layout is ambiguous and this raises ``SpatError``; so does an array with
    neither or with another number of dimensions.
    """
    if x.ndim == 3:
        return x[:, None, :, :]
    if x.ndim == 4:
        first, last = x.shape[1] in _CHANNELS, x.shape[3] in _CHANNELS
        if first and not last:
            return x
        if last and not first:
            return x.transpose(0, 3, 1, 2)
        why = "ambiguous layout: axes 1 and 3 both" if first else "neither axis 1 nor axis 3"
        raise SpatError(f"{path}: {key} has shape {x.shape}, {why} could be the channel axis "
                        "(size 1 or 3); store it as (N, H, W), (N, H, W, C) or (N, C, H, W) with "
                        "exactly one such axis")
    raise SpatError(f"{path}: {key} must be (N, H, W), (N, H, W, C) or (N, C, H, W) with C in "
                    f"{{1, 3}}, found shape {x.shape}")


def _labels(y: np.ndarray, key: str, path: Path) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise SpatError(f"{path}: {key} must be one-dimensional (N,), found shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise SpatError(f"{path}: {key} must hold integer class ids, found dtype {y.dtype}")
    if y.size and y.min() < 0:
        raise SpatError(f"{path}: {key} has negative label {int(y.min())}")
    if y.size and int(y.max()) >= MAX_CLASSES:  # before the cast: uint64 could wrap
        raise SpatError(f"{path}: {key} has label {int(y.max())}, but labels are class ids "
                        f"0..K-1 with at most {MAX_CLASSES} classes (K×K confusion matrices "
                        "are recorded and analysed)")
    return y.astype(np.int64)


def _class_names(names_arr: np.ndarray | None, labels: dict[str, np.ndarray], path: Path
                 ) -> tuple[str, ...]:
    """The ``class_names`` array as strings (each label must index it, at most
    :data:`MAX_CLASSES` names), or "0".."K-1" for the largest label K-1 when there is none (K at
    most the number of labelled examples: more would be ids that name no example); at least two
    classes. Checked before anything of size K is made."""
    top = max(int(labels["y_train"].max()), int(labels["y_test"].max()))
    if names_arr is not None:
        if names_arr.ndim != 1 or names_arr.dtype.kind not in "US":
            raise SpatError(f"{path}: class_names must be a 1-D array of strings, found "
                            f"{names_arr.dtype} {names_arr.shape}")
        if len(names_arr) > MAX_CLASSES:
            raise SpatError(f"{path}: class_names has {len(names_arr)} names, more than the "
                            f"{MAX_CLASSES} classes spat supports")
        names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names_arr.tolist())
        if top >= len(names):
            raise SpatError(f"{path}: label {top} is out of range for {len(names)} class names")
    else:
        labelled = len(labels["y_train"]) + len(labels["y_test"])
        if top + 1 > labelled:
            raise SpatError(f"{path}: label {top} makes {top + 1} classes (without class_names, "
                            f"K = largest label + 1) for only {labelled} labelled examples, so "
                            "some class ids name no example: number the classes 0..K-1 or "
                            "store class_names")
        names = tuple(str(i) for i in range(top + 1))
    if len(names) < 2:
        raise SpatError(f"{path}: needs at least 2 classes, found {len(names)}")
    return names


def npz_class_names(path: str | Path) -> tuple[str, ...] | None:
    """The class names of the ``.npz`` file at ``path`` as :func:`load_npz` gives them, read
    from its ``class_names`` and label arrays only (not the images); ``None`` when the file is
    missing or not a valid dataset (loading it says why)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            labels = {k: _labels(f[k], k, path) for k in ("y_train", "y_test")}
            if not all(y.size for y in labels.values()):
                return None
            return _class_names(f["class_names"] if "class_names" in f.files else None,
                                labels, path)
    except Exception:  # noqa: BLE001 - any problem: unknown here, reported by the load
        return None

def _check_zip(path: Path) -> None:
    """Refuse a file that is not a zip archive before numpy reads it (numpy would take it for a
    pickle and talk of trusting the file), naming what it is."""
    try:
        with path.open("rb") as f:
            head = f.read(6)
    except OSError as e:
        raise SpatError(f"cannot read {path} ({e.strerror or type(e).__name__})") from None
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return
    what = ("a single .npy array" if head.startswith(b"\x93NUMPY") else
            "empty" if not head else "not a zip archive")
    raise SpatError(f"{path} is not an .npz file: it is {what} (an .npz is the zip archive "
                    f"that numpy.savez writes, holding x_train, y_train, x_test, y_test)")


def load_npz(path: str | Path) -> RawDataset:
    """The user's dataset from an ``.npz`` file (loaded with ``allow_pickle=False``).

    Keys: ``x_train``, ``y_train``, ``x_test``, ``y_test`` and optionally ``class_names`` (a
    1-D string array). Images are ``uint8`` (0..255 = [0,1] pixel units) of shape (N, H, W)
    (greyscale), (N, H, W, C) or (N, C, H, W) with C in {1, 3}; the layout is detected from
    which of axes 1 and 3 has size 1 or 3 (see :func:`to_nchw`). Labels are integers 0..K-1;
    K is ``len(class_names)`` if given, else the largest label + 1 (names "0".."K-1"), and
    2 <= K <= :data:`MAX_CLASSES`; without ``class_names``, K must also be at most the number of
    labelled examples (train + test): N labels hold at most N distinct ids, so a larger K means
    ids that name no example (sparse ids: give ``class_names``). Each problem (missing key,
    wrong dtype or shape, train/test mismatch, label out of range) is a one-line ``SpatError``,
    raised before anything of size K is made. Augmentation ``"crop_flip"`` for 3x32x32 images,
    else ``"none"``; family ``"custom"``.
    """
    path = Path(path)
    if not path.is_file():
        raise SpatError(f"npz file not found: {path} (pass the path of your .npz file as "
                        "data_dir / --data-dir)")
    _check_zip(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in NPZ_KEYS if k not in f.files]
            if missing:
                raise SpatError(f"{path}: missing key(s) {', '.join(missing)} (needs "
                                f"{', '.join(NPZ_KEYS)}; optional class_names; found "
                                f"{', '.join(f.files) or 'none'})")
            arrays = {k: f[k] for k in (*NPZ_KEYS, "class_names") if k in f.files}
    except SpatError:
        raise
    except Exception as e:  # not a zip file, pickled object arrays, truncated data ...
        raise SpatError(f"cannot read {path} as a .npz file ({one_line(e, None)})") from e

    images = {}
    for key in ("x_train", "x_test"):
        x = arrays[key]
        if x.dtype != np.uint8:
            raise SpatError(f"{path}: {key} must be uint8 (pixel values 0..255), found dtype "
                            f"{x.dtype}")
        images[key] = np.ascontiguousarray(to_nchw(x, key, path))
    if images["x_train"].shape[1:] != images["x_test"].shape[1:]:
        raise SpatError(f"{path}: train and test images differ in shape (C, H, W): "
                        f"{images['x_train'].shape[1:]} vs {images['x_test'].shape[1:]}")
    labels = {k: _labels(arrays[k], k, path) for k in ("y_train", "y_test")}
    for xk, yk in (("x_train", "y_train"), ("x_test", "y_test")):
        if len(images[xk]) != len(labels[yk]):
            raise SpatError(f"{path}: {xk} has {len(images[xk])} images but {yk} has "
                            f"{len(labels[yk])} labels")
        if len(images[xk]) == 0:
            raise SpatError(f"{path}: {xk} is empty")
    names = _class_names(arrays.get("class_names"), labels, path)
    _, c, h, w = images["x_train"].shape
    return RawDataset(
        name="npz",
        class_names=names,
        family="custom",
        augment="crop_flip" if (c, h, w) == (3, 32, 32) else "none",
        train_images=images["x_train"],
        train_labels=labels["y_train"],
        test_images=images["x_test"],
        test_labels=labels["y_test"],
    )
