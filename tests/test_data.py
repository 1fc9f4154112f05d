"""Tests of spat.data: loaders (real MNIST/Fashion-MNIST, generated CIFAR/SVHN/npz files),
the validation split, the restricted unpickler, batching, sharding and augmentation."""

from __future__ import annotations

import os
import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from spat.data import (
    DATASETS,
    DataBundle,
    Split,
    augment_batch,
    batches,
    dataset_names,
    dataset_record,
    load_cifar,
    load_dataset,
    load_npz,
    load_svhn,
    num_batches,
    safe_unpickle,
    split_validation,
)
from spat.data.cifar import CIFAR_FOLDERS
from spat.data.mnist import mnist_files_ok
from spat.errors import SpatError
from tests.conftest import SHARED_DATA, shared_data_or_skip

MNIST_CLASS_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
FASHION_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                 "Sneaker", "Bag", "Ankle boot")


# --------------------------------------------------------------------------- registry, digits


def test_registry_names() -> None:
    assert dataset_names() == list(DATASETS) and dataset_names()[0] == "digits"
    with pytest.raises(SpatError, match="unknown dataset 'imagenet'.*digits"):
        load_dataset("imagenet")
    with pytest.raises(SpatError, match="unknown dataset 'imagenet'.*digits"):
        dataset_record("imagenet")
    assert dataset_record("Fashion-MNIST") is DATASETS["fashion_mnist"]


@pytest.mark.parametrize("name", list(DATASETS))
def test_every_dataset_is_one_whole_record(name: str) -> None:
    """Each registered dataset has its loader, its sizes (or None where the user's file
    decides) and its defaults with their source, all in one record."""
    rec = DATASETS[name]
    assert callable(rec.loader) and rec.defaults.source
    assert rec.sizes is None or (len(rec.sizes) == 2 and min(rec.sizes) > 0)
    d = rec.defaults
    assert 0 < d.step_size <= d.eps <= 1 and d.steps >= 1 and d.epochs >= 1 and d.lr > 0


def test_digits_record_sizes_are_the_loaded_sizes(digits: DataBundle) -> None:
    assert DATASETS["digits"].sizes == (len(digits.train), len(digits.test))


@pytest.fixture(scope="module")
def digits() -> DataBundle:
    return load_dataset("digits")


def test_digits_shapes_counts_names(digits: DataBundle) -> None:
    info = digits.info
    assert (info.name, info.num_classes, info.channels, info.height, info.width) == (
        "digits", 10, 1, 8, 8)
    assert info.class_names == tuple("0123456789")
    assert (info.augment, info.family) == ("none", "digits")
    assert len(digits.train) == 1297 and len(digits.test) == 500 and len(digits.val) == 0
    assert digits.val.images.shape == (0, 1, 8, 8)
    for s in (digits.train, digits.test):
        assert s.images.dtype == torch.uint8 and s.labels.dtype == torch.int64
        assert s.images.shape[1:] == (1, 8, 8)
    # 17 grey levels 0..16 -> round(v * 255 / 16)
    levels = {round(v * 255 / 16) for v in range(17)}
    assert set(torch.unique(digits.train.images).tolist()) <= levels
    assert int(digits.train.images.max()) == 255
    # stratified: each class gets its share of the 500 test examples, rounded
    counts = torch.bincount(digits.test.labels, minlength=10)
    totals = counts + torch.bincount(digits.train.labels, minlength=10)
    assert counts.sum() == 500 and totals.sum() == 1797
    assert ((counts - totals * 500 / 1797).abs() < 1).all()
    # mean/std in [0,1] units from the training images
    x = digits.train.images.double() / 255
    assert info.mean[0] == pytest.approx(x.mean().item(), abs=1e-9)
    assert info.std[0] == pytest.approx(x.std(unbiased=False).item(), abs=1e-9)


def test_digits_test_split_is_fixed(digits: DataBundle) -> None:
    other = load_dataset("digits", seed=7, val_size=50)
    assert torch.equal(other.test.images, digits.test.images)
    assert torch.equal(other.test.labels, digits.test.labels)


# --------------------------------------------------------------------------- validation split


def test_val_split_sizes_and_stats(digits: DataBundle) -> None:
    b = load_dataset("digits", val_size=100, seed=3)
    assert (len(b.train), len(b.val), len(b.test)) == (1197, 100, 500)
    assert len(load_dataset("digits", val_size=0.1).val) == 130  # round(0.1 * 1297)
    assert len(load_dataset("digits", val_size=300.0).val) == 300  # integral float = count
    assert len(load_dataset("digits", val_size=np.int64(10)).val) == 10
    x = b.train.images.double() / 255  # statistics from train after removing val
    assert b.info.mean[0] == pytest.approx(x.mean().item(), abs=1e-9)
    # train + val together are the original training set
    whole = torch.cat([b.train.images, b.val.images]).reshape(1297, -1)
    orig = digits.train.images.reshape(1297, -1)
    key = torch.tensor([1 << (8 * i % 62) for i in range(64)], dtype=torch.int64)
    assert sorted((whole.long() * key).sum(1).tolist()) == sorted(
        (orig.long() * key).sum(1).tolist())


def test_val_split_disjoint_and_seeded() -> None:
    images = np.arange(1000, dtype=np.int64)[:, None]  # each image is its index
    labels = np.arange(1000)
    tr_x, tr_y, va_x, va_y = split_validation(images, labels, 200, seed=5)
    assert len(va_y) == 200 and len(tr_y) == 800
    assert set(tr_y.tolist()).isdisjoint(va_y.tolist())
    assert set(tr_y.tolist()) | set(va_y.tolist()) == set(range(1000))
    assert np.array_equal(tr_x[:, 0], tr_y) and np.array_equal(va_x[:, 0], va_y)
    assert np.array_equal(split_validation(images, labels, 200, seed=5)[3], va_y)
    assert not np.array_equal(split_validation(images, labels, 200, seed=6)[3], va_y)
    a = load_dataset("digits", val_size=64, seed=1)
    b = load_dataset("digits", val_size=64, seed=1)
    c = load_dataset("digits", val_size=64, seed=2)
    assert torch.equal(a.val.images, b.val.images) and torch.equal(a.val.labels, b.val.labels)
    assert not torch.equal(a.val.images, c.val.images)


@pytest.mark.parametrize("val_size", [1297, 5000, 1.0 * 1297])
def test_val_split_too_large(val_size: float) -> None:
    with pytest.raises(SpatError, match=r"larger than the training set \(1297\)"):
        load_dataset("digits", val_size=val_size)


@pytest.mark.parametrize("val_size", [-1, -0.5, 2.5])
def test_val_split_bad_values(val_size: float) -> None:
    with pytest.raises(SpatError, match="validation size"):
        load_dataset("digits", val_size=val_size)


# --------------------------------------------------------------------------- MNIST, Fashion-MNIST


@pytest.fixture(scope="module")
def mnist() -> DataBundle:
    return load_dataset("mnist", data_dir=shared_data_or_skip("MNIST"))


def test_mnist_real(mnist: DataBundle) -> None:
    info = mnist.info
    assert (len(mnist.train), len(mnist.test), len(mnist.val)) == (60000, 10000, 0)
    assert mnist.train.images.shape == (60000, 1, 28, 28)
    assert mnist.train.images.dtype == torch.uint8
    assert torch.bincount(mnist.train.labels).tolist() == MNIST_CLASS_COUNTS
    assert info.mean[0] == pytest.approx(0.1307, abs=1e-3)
    assert info.std[0] == pytest.approx(0.3081, abs=1e-3)
    assert info.class_names == tuple("0123456789")
    assert (info.family, info.augment, info.num_classes) == ("mnist", "none", 10)
    # download=True only fetches when a file is missing or corrupted: offline here
    assert mnist_files_ok(SHARED_DATA, "mnist") and mnist_files_ok(SHARED_DATA, "fashion_mnist")


def test_fashion_mnist_real() -> None:
    b = load_dataset("fashion-mnist", data_dir=shared_data_or_skip("FashionMNIST"), val_size=0.1)
    assert (len(b.train), len(b.val), len(b.test)) == (54000, 6000, 10000)
    assert b.info.name == "fashion_mnist" and b.info.class_names == FASHION_NAMES
    assert torch.bincount(b.test.labels).tolist() == [1000] * 10
    full = torch.bincount(torch.cat([b.train.labels, b.val.labels])).tolist()
    assert full == [6000] * 10
    assert b.info.mean[0] == pytest.approx(0.2860, abs=2e-3)


def test_mnist_corrupted_copy(tmp_path: Path) -> None:
    src = shared_data_or_skip("MNIST") / "MNIST" / "raw"
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in src.iterdir():
        shutil.copyfile(f, raw / f.name)
    bad = raw / "train-labels-idx1-ubyte.gz"
    data = bytearray(bad.read_bytes())
    data[100] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(SpatError) as e:
        load_dataset("mnist", data_dir=tmp_path)
    msg = str(e.value)
    assert str(bad) in msg and "d53e105ee54ea40749a09fcbcd1e9432" in msg and "\n" not in msg


def test_mnist_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(SpatError, match="not found.*download") as e:
        load_dataset("mnist", data_dir=tmp_path / "nowhere")
    assert str(tmp_path / "nowhere" / "MNIST" / "raw") in str(e.value)


# --------------------------------------------------------------------------- CIFAR


def _py2_pickle(obj: object) -> bytes:
    """A protocol-2 pickle as Python 2's cPickle wrote the official CIFAR files: ``str`` as
    8-bit strings (SHORT_BINSTRING/BINSTRING) and numpy arrays via
    ``numpy.core.multiarray._reconstruct``. Supports dict, list, str, int, uint8 ndarray."""
    out = bytearray(b"\x80\x02")

    def string(b: bytes) -> None:
        head = b"U" + bytes([len(b)]) if len(b) < 256 else b"T" + struct.pack("<i", len(b))
        out.extend(head + b)

    def integer(i: int) -> None:
        out.extend(b"K" + bytes([i]) if 0 <= i < 256 else b"J" + struct.pack("<i", i))

    def emit(o: object) -> None:
        if isinstance(o, dict):
            out.extend(b"}(")
            for k, v in o.items():
                emit(k)
                emit(v)
            out.extend(b"u")
        elif isinstance(o, list):
            out.extend(b"](")
            for v in o:
                emit(v)
            out.extend(b"e")
        elif isinstance(o, str):
            string(o.encode("latin-1"))
        elif isinstance(o, int):
            integer(o)
        elif isinstance(o, np.ndarray):
            assert o.dtype == np.uint8 and o.ndim == 2
            out.extend(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R")
            out.extend(b"(K\x01")
            integer(o.shape[0])
            integer(o.shape[1])
            out.extend(b"\x86cnumpy\ndtype\nU\x02u1K\x00K\x01\x87R")
            out.extend(b"(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb")
            out.extend(b"\x89")
            string(np.ascontiguousarray(o).tobytes())
            out.extend(b"tb")
        else:
            raise TypeError(type(o))

    emit(obj)
    out.extend(b".")
    return bytes(out)


def _cifar_pixels(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8)


def test_py2_pickle_helper_matches_pickle() -> None:
    obj = {"data": np.arange(12, dtype=np.uint8).reshape(3, 4), "labels": [1, 2, 300]}
    back = pickle.loads(_py2_pickle(obj), encoding="bytes")
    assert back[b"labels"] == [1, 2, 300] and np.array_equal(back[b"data"], obj["data"])


def test_cifar10_parse_layout(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    folder = tmp_path / CIFAR_FOLDERS["cifar10"]
    folder.mkdir()
    batches_data = []
    for i in range(1, 6):
        data = _cifar_pixels(rng, 3)
        labels = [int(v) for v in rng.integers(0, 10, 3)]
        batches_data.append((data, labels))
        (folder / f"data_batch_{i}").write_bytes(
            _py2_pickle({"batch_label": f"training batch {i} of 5", "labels": labels,
                         "data": data, "filenames": [f"f{j}.png" for j in range(3)]}))
    test = _cifar_pixels(rng, 4)
    c, r, col = 2, 5, 17  # blue plane, row 5, column 17 of test image 1
    test[1, c * 1024 + r * 32 + col] = 7
    test[1, 0 * 1024 + r * 32 + col] = 200
    (folder / "test_batch").write_bytes(
        _py2_pickle({"batch_label": "testing batch 1 of 1", "labels": [9, 0, 1, 2],
                     "data": test, "filenames": ["a", "b", "c", "d"]}))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
             "truck"]
    (folder / "batches.meta").write_bytes(
        _py2_pickle({"num_cases_per_batch": 10000, "label_names": names, "num_vis": 3072}))
    raw = load_cifar(tmp_path, "cifar10", verify=False)
    assert raw.class_names == tuple(names)
    assert (raw.family, raw.augment) == ("cifar", "crop_flip")
    assert raw.train_images.shape == (15, 3, 32, 32) and raw.train_images.dtype == np.uint8
    assert raw.train_labels.tolist() == sum((b[1] for b in batches_data), [])
    assert np.array_equal(raw.train_images[3:6].reshape(3, -1), batches_data[1][0])
    assert raw.test_labels.tolist() == [9, 0, 1, 2]
    assert raw.test_images[1, c, r, col] == 7 and raw.test_images[1, 0, r, col] == 200
    assert np.array_equal(raw.test_images[0, 1], test[0, 1024:2048].reshape(32, 32))
    # load_dataset always verifies: the generated files fail the official md5
    with pytest.raises(SpatError, match="checksum mismatch.*data_batch_1"):
        load_dataset("cifar10", data_dir=tmp_path)


def test_cifar100_parse(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    folder = tmp_path / CIFAR_FOLDERS["cifar100"]
    folder.mkdir()
    train, test = _cifar_pixels(rng, 6), _cifar_pixels(rng, 2)
    train[4, 1 * 1024 + 31 * 32 + 0] = 123  # green, last row, first column
    # Python 3 pickles (protocol 3) with bytes keys, as some re-saved copies are
    for name, data, labels in (("train", train, [0, 99, 5, 6, 7, 8]), ("test", test, [42, 3])):
        d = {b"data": data, b"fine_labels": labels, b"coarse_labels": [0] * len(labels)}
        (folder / name).write_bytes(pickle.dumps(d, protocol=3))
    names = [f"class{i}" for i in range(100)]
    meta = {b"fine_label_names": names, b"coarse_label_names": [f"c{i}" for i in range(20)]}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=3))
    raw = load_cifar(tmp_path, "cifar100", verify=False)
    assert len(raw.class_names) == 100 and raw.class_names[99] == "class99"
    assert raw.train_labels.tolist() == [0, 99, 5, 6, 7, 8] and raw.test_labels.tolist() == [42, 3]
    assert raw.train_images[4, 1, 31, 0] == 123
    with pytest.raises(SpatError, match="unknown CIFAR variant"):
        load_cifar(tmp_path, "cifar1000", verify=False)
    with pytest.raises(SpatError, match="not found.*download"):
        load_dataset("cifar10", data_dir=tmp_path)


def test_cifar_bad_labels(tmp_path: Path) -> None:
    folder = tmp_path / CIFAR_FOLDERS["cifar100"]
    folder.mkdir()
    for name in ("train", "test"):
        d = {"data": np.zeros((2, 3072), np.uint8), "fine_labels": [0, 100]}
        (folder / name).write_bytes(_py2_pickle(d))
    (folder / "meta").write_bytes(_py2_pickle({"fine_label_names": ["x"] * 100}))
    with pytest.raises(SpatError, match="labels must be in 0..99"):
        load_cifar(tmp_path, "cifar100", verify=False)


class _System:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.target}",)


class _Open:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return open, (str(self.target), "w")


def test_restricted_unpickler_refuses_code(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"data": _System(target)}, protocol=2))
    with pytest.raises(SpatError, match=r"refusing to unpickle .*system"):
        safe_unpickle(evil)
    assert not target.exists()

    # the same through the CIFAR loader, as a batch file
    folder = tmp_path / CIFAR_FOLDERS["cifar10"]
    folder.mkdir()
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
                 "data_batch_5", "test_batch", "batches.meta"):
        shutil.copyfile(evil, folder / name)
    with pytest.raises(SpatError, match="refusing"):
        load_cifar(tmp_path, "cifar10", verify=False)
    assert not target.exists()


class _Eval:
    def __init__(self, source: str) -> None:
        self.source = source

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return eval, (self.source,)


def test_restricted_unpickler_refuses_open(tmp_path: Path) -> None:
    target = tmp_path / "created"
    payload = pickle.dumps([1, _Open(target)], protocol=4)
    f = pickle.loads(payload)[1]  # sanity: a plain unpickler does create the file
    f.close()
    assert target.exists()
    target.unlink()
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(payload)
    with pytest.raises(SpatError, match=r"io\.open"):
        safe_unpickle(evil)
    assert not target.exists()
    evil.write_bytes(pickle.dumps(_Eval(f"open({str(target)!r}, 'w').close()"), protocol=2))
    with pytest.raises(SpatError, match=r"__builtin__\.eval"):
        safe_unpickle(evil)
    assert not target.exists()


def test_restricted_unpickler_bad_file(tmp_path: Path) -> None:
    p = tmp_path / "junk"
    p.write_bytes(b"\x80\x02}q\x00(U")  # truncated
    with pytest.raises(SpatError, match="not a valid pickle"):
        safe_unpickle(p)


# --------------------------------------------------------------------------- SVHN


def _write_svhn(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    import scipy.io

    scipy.io.savemat(str(path), {"X": x, "y": y})


def test_svhn_parse_layout(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    x_train = rng.integers(0, 256, (32, 32, 3, 5), dtype=np.uint8)
    x_train[3, 20, 1, 4] = 77  # row 3, column 20, green, example 4
    y_train = np.array([[10], [1], [2], [9], [10]], dtype=np.uint8)
    x_test = rng.integers(0, 256, (32, 32, 3, 2), dtype=np.uint8)
    _write_svhn(tmp_path / "train_32x32.mat", x_train, y_train)
    _write_svhn(tmp_path / "test_32x32.mat", x_test, np.array([[5], [10]], dtype=np.uint8))
    raw = load_svhn(tmp_path, verify=False)
    assert raw.train_images.shape == (5, 3, 32, 32) and raw.train_images.dtype == np.uint8
    assert raw.train_labels.tolist() == [0, 1, 2, 9, 0] and raw.test_labels.tolist() == [5, 0]
    assert raw.train_images[4, 1, 3, 20] == 77
    assert np.array_equal(raw.test_images[1], x_test[:, :, :, 1].transpose(2, 0, 1))
    assert (raw.family, raw.augment, raw.class_names) == ("svhn", "none", tuple("0123456789"))
    with pytest.raises(SpatError, match="checksum mismatch.*train_32x32.mat"):
        load_dataset("svhn", data_dir=tmp_path)
    (tmp_path / "test_32x32.mat").unlink()
    with pytest.raises(SpatError, match="test_32x32.mat.*download"):
        load_svhn(tmp_path, verify=False)


# --------------------------------------------------------------------------- npz


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def _good_arrays(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "x_train": rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8),
        "y_train": rng.integers(0, 4, 20),
        "x_test": rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8),
        "y_test": np.array([0, 1, 2, 3, 3, 0]),
    }


def test_npz_happy_path(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    a = _good_arrays(rng)
    a["x_train"][2, 7, 9, 1] = 250  # NHWC: row 7, column 9, channel 1
    path = _npz(tmp_path / "mine.npz", **a, class_names=np.array(["a", "b", "c", "d"]))
    b = load_dataset("npz", data_dir=path, val_size=4)
    info = b.info
    assert (info.name, info.family, info.augment) == ("npz", "custom", "crop_flip")
    assert (info.num_classes, info.channels, info.height, info.width) == (4, 3, 32, 32)
    assert info.class_names == ("a", "b", "c", "d")
    assert (len(b.train), len(b.val), len(b.test)) == (16, 4, 6)
    raw = load_npz(path)
    assert raw.train_images[2, 1, 7, 9] == 250
    assert raw.train_labels.dtype == np.int64 and raw.train_labels.tolist() == a["y_train"].tolist()

    # greyscale (N, H, W) and (N, 1, H, W); no class names -> "0".."K-1"
    grey = {"x_train": rng.integers(0, 256, (5, 10, 12), dtype=np.uint8),
            "y_train": np.array([0, 1, 2, 1, 0], dtype=np.uint8),
            "x_test": rng.integers(0, 256, (3, 1, 10, 12), dtype=np.uint8),
            "y_test": np.array([2, 2, 0])}
    g = load_dataset("npz", data_dir=_npz(tmp_path / "grey.npz", **grey))
    assert (g.info.channels, g.info.height, g.info.width, g.info.augment) == (1, 10, 12, "none")
    assert g.info.class_names == ("0", "1", "2")
    assert torch.equal(g.train.images[:, 0], torch.from_numpy(grey["x_train"]))
    assert torch.equal(g.test.images, torch.from_numpy(grey["x_test"]))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"y_test": None}, "missing key.*y_test"),
        ({"x_train": np.zeros((20, 32, 32, 3), np.float32)}, "x_train must be uint8"),
        ({"x_test": np.zeros((6, 28, 28, 3), np.uint8)}, "differ in shape"),
        ({"y_train": np.zeros(19, np.int64)}, "20 images but y_train has 19"),
        ({"y_test": np.array([0, 1, 2, 3, 4, 0])}, "label 4 is out of range for 4 class"),
        ({"y_train": np.full(20, -1)}, "negative label"),
        ({"y_train": np.zeros(20, np.float32)}, "integer class ids"),
        ({"y_train": np.zeros((20, 2), np.int64)}, "one-dimensional"),
        ({"x_train": np.zeros((20, 3, 8, 3), np.uint8)}, "ambiguous layout"),
        ({"x_train": np.zeros((20, 32, 32, 4), np.uint8)}, "neither axis 1 nor axis 3"),
        ({"x_train": np.zeros((20, 32 * 32 * 3), np.uint8)}, "must be \\(N, H, W\\)"),
        ({"x_train": np.zeros((0, 32, 32, 3), np.uint8), "y_train": np.zeros(0, np.int64)},
         "x_train is empty"),
        ({"class_names": np.array([[1, 2]])}, "class_names must be a 1-D array of strings"),
    ],
)
def test_npz_validation_errors(tmp_path: Path, change: dict, match: str) -> None:
    a = _good_arrays(np.random.default_rng(4))
    a["class_names"] = np.array(["a", "b", "c", "d"])
    for k, v in change.items():
        if v is None:
            del a[k]
        else:
            a[k] = v
    path = _npz(tmp_path / "bad.npz", **a)
    with pytest.raises(SpatError, match=match) as e:
        load_dataset("npz", data_dir=path)
    assert "\n" not in str(e.value)


def test_npz_file_errors(tmp_path: Path) -> None:
    with pytest.raises(SpatError, match="npz file not found"):
        load_dataset("npz", data_dir=tmp_path / "none.npz")
    with pytest.raises(SpatError, match="needs the path"):
        load_dataset("npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(SpatError, match="is not an .npz file: it is not a zip archive"):
        load_dataset("npz", data_dir=junk)
    a = _good_arrays(np.random.default_rng(5))
    a["class_names"] = np.array([{"x": 1}], dtype=object)  # needs pickle: refused
    np.savez(tmp_path / "obj.npz", **a)
    with pytest.raises(SpatError, match="cannot read"):
        load_dataset("npz", data_dir=tmp_path / "obj.npz")


# --------------------------------------------------------------------------- batches


def _indexed_split(n: int, shape: tuple[int, ...] = (1, 2, 2)) -> Split:
    """Images whose pixels all equal the example index (n <= 256); labels = index."""
    images = torch.arange(n, dtype=torch.uint8)[:, None, None, None].expand(n, *shape)
    return Split(images=images.contiguous(), labels=torch.arange(n))


def test_batches_cover_each_example_once() -> None:
    split = _indexed_split(103)
    g = torch.Generator().manual_seed(0)
    out = list(batches(split, 10, shuffle=True, generator=g))
    assert len(out) == num_batches(103, 10, False) == 11
    seen = torch.cat([y for _, y in out])
    assert sorted(seen.tolist()) == list(range(103))
    assert seen.tolist() != list(range(103))  # shuffled
    for x, y in out:
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.device.type == "cpu" and x.shape[1:] == (1, 2, 2)
        assert 0.0 <= x.min() and x.max() <= 1.0
        assert torch.equal(x * 255, y[:, None, None, None].float().expand_as(x))
    plain = list(batches(split, 10))
    assert torch.cat([y for _, y in plain]).tolist() == list(range(103))
    dropped = list(batches(split, 10, shuffle=True, drop_last=True, generator=g))
    assert len(dropped) == num_batches(103, 10, True) == 10
    assert all(len(y) == 10 for _, y in dropped)
    assert list(batches(_indexed_split(0), 4)) == [] and num_batches(0, 4, False) == 0


def test_batches_seeded() -> None:
    split = _indexed_split(50, (3, 6, 6))

    def run(seed: int, augment: str = "none") -> list[torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        return [t for xy in batches(split, 8, shuffle=True, generator=g, augment=augment)
                for t in xy]

    a, b, c = run(1), run(1), run(2)
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert not all(torch.equal(u, v) for u, v in zip(a, c, strict=True))
    a, b = run(3, "crop_flip"), run(3, "crop_flip")
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))


@pytest.mark.parametrize(("n", "world"), [(103, 2), (10, 3), (2, 3), (1, 4), (12, 4)])
def test_batches_distributed(n: int, world: int) -> None:
    split = _indexed_split(n)
    shards = []
    for rank in range(world):
        g = torch.Generator().manual_seed(9)  # the same seed on every rank
        out = list(batches(split, 5, shuffle=True, generator=g, rank=rank, world_size=world))
        assert len(out) == num_batches(n, 5, False, world)
        shards.append(torch.cat([y for _, y in out]).tolist())
    per_rank = -(-n // world)
    assert all(len(s) == per_rank for s in shards)
    together = sum(shards, [])
    assert set(together) == set(range(n)) and len(together) == per_rank * world
    for rank in range(world):
        g = torch.Generator().manual_seed(9)
        n_drop = len(list(batches(split, 5, shuffle=True, generator=g, rank=rank,
                                  world_size=world, drop_last=True)))
        assert n_drop == num_batches(n, 5, True, world) == per_rank // 5


def test_batches_bad_arguments() -> None:
    split = _indexed_split(4)
    with pytest.raises(SpatError, match="batch size"):
        batches(split, 0)
    with pytest.raises(SpatError, match="rank"):
        batches(split, 2, rank=2, world_size=2)
    with pytest.raises(SpatError, match="unknown augmentation 'mixup'"):
        batches(split, 2, augment="mixup")


def test_batches_non_cpu_device_copy_once() -> None:
    # the "meta" device exercises the accelerator path (copy once, gather there) without a GPU
    split = _indexed_split(10, (3, 8, 8))
    g = torch.Generator().manual_seed(0)
    out = list(batches(split, 4, device="meta", shuffle=True, generator=g, augment="crop_flip"))
    assert [tuple(x.shape) for x, _ in out] == [(4, 3, 8, 8), (4, 3, 8, 8), (2, 3, 8, 8)]
    assert all(x.is_meta and y.is_meta and x.dtype == torch.float32 for x, y in out)
    first = split.on_device("meta")[0]
    assert first.dtype == torch.uint8 and split.on_device("meta")[0] is first
    split.images = split.images.clone()  # replaced tensors -> a fresh copy
    assert split.on_device("meta")[0] is not first


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_batches_cuda() -> None:
    split = _indexed_split(40, (3, 32, 32))
    g = torch.Generator().manual_seed(0)
    out = list(batches(split, 16, device="cuda", shuffle=True, generator=g, augment="crop_flip"))
    assert all(x.is_cuda and y.is_cuda and x.dtype == torch.float32 for x, y in out)
    assert sorted(torch.cat([y for _, y in out]).tolist()) == list(range(40))
    img_dev, _ = split.on_device("cuda")
    assert img_dev.dtype == torch.uint8 and split.on_device("cuda")[0] is img_dev  # cached
    x = torch.rand(8, 3, 32, 32, device="cuda")
    a = augment_batch(x, "crop_flip", torch.Generator().manual_seed(1))
    b = augment_batch(x.cpu(), "crop_flip", torch.Generator().manual_seed(1))
    assert torch.equal(a.cpu(), b)


# --------------------------------------------------------------------------- augment_batch


def _matches_some_crop(out: torch.Tensor, img: torch.Tensor) -> bool:
    padded = torch.nn.functional.pad(img, (4, 4, 4, 4))
    h, w = img.shape[1:]
    for dy in range(9):
        for dx in range(9):
            crop = padded[:, dy:dy + h, dx:dx + w]
            if torch.equal(out, crop) or torch.equal(out, crop.flip(2)):
                return True
    return False


def test_augment_crop_flip_values() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 3, 7, 9, generator=g) + 0.1  # non-zero, so padding is recognisable
    out = augment_batch(x, "crop_flip", torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == x.dtype
    for i in range(16):
        assert _matches_some_crop(out[i], x[i])
    # random: not every example is the unchanged image
    assert sum(torch.equal(out[i], x[i]) for i in range(16)) < 16
    again = augment_batch(x, "crop_flip", torch.Generator().manual_seed(1))
    assert torch.equal(out, again)
    other = augment_batch(x, "crop_flip", torch.Generator().manual_seed(2))
    assert not torch.equal(out, other)


def test_augment_crop_flip_covers_offsets_and_flips() -> None:
    # a single bright pixel at the centre reveals each example's offset and flip
    n = 400
    x = torch.zeros(n, 1, 9, 9)
    x[:, 0, 4, 3] = 1.0  # left of centre, so a flip moves it
    out = augment_batch(x, "crop_flip", torch.Generator().manual_seed(0))
    pos = out[:, 0].flatten(1).argmax(1)
    visible = out[:, 0].flatten(1).max(1).values == 1.0
    rows, cols = pos[visible] // 9, pos[visible] % 9
    assert len(set(rows.tolist())) == 9  # row offsets 0..8 all occur (pixel row 4 -> 0..8)
    assert len(set(cols.tolist())) == 9
    assert 0.3 < visible.float().mean() < 1.0  # some windows cut the pixel off (zero padding)


def test_augment_none_and_unknown() -> None:
    x = torch.rand(2, 3, 4, 4)
    assert augment_batch(x, "none", None) is x
    with pytest.raises(SpatError, match="unknown augmentation 'rotate'"):
        augment_batch(x, "rotate", None)
