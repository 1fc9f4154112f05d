"""The ``predictions.npz`` format: every array in the smallest unsigned type that holds the
largest class index, read back as the same int64 numbers; files of earlier versions (int16)
still read; a negative class index, a non-integer array or a stray array is refused."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from spat.errors import SpatError
from spat.evaluation import Predictions


def _predictions(k: int, n: int = 300, seed: int = 0) -> Predictions:
    """Random predictions over ``k`` classes, with class ``k - 1`` present."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, k, (n,), generator=g)
    labels[0] = k - 1
    return Predictions(labels=labels, clean=torch.randint(0, k, (n,), generator=g),
                       adversarial={"PGD-20": torch.randint(0, k, (n,), generator=g),
                                    "AutoAttack": torch.randint(0, k, (n,), generator=g)})


def _arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _same(a: Predictions, b: Predictions) -> None:
    assert list(b.adversarial) == list(a.adversarial)
    for name in (None, *a.adversarial):
        assert torch.equal(a.predicted(name), b.predicted(name)), name
        assert b.predicted(name).dtype == torch.int64
    assert torch.equal(a.labels, b.labels) and b.labels.dtype == torch.int64


@pytest.mark.parametrize(("k", "dtype"), [(2, np.uint8), (10, np.uint8), (256, np.uint8),
                                          (257, np.uint16), (65536, np.uint16),
                                          (65537, np.uint32)])
def test_round_trip_in_the_smallest_unsigned_type(tmp_path: Path, k: int, dtype) -> None:
    preds = _predictions(k)
    path = tmp_path / "predictions.npz"
    preds.save(path)
    arrays = _arrays(path)
    assert set(arrays) == {"labels", "clean", "adv/PGD-20", "adv/AutoAttack"}
    assert {a.dtype for a in arrays.values()} == {np.dtype(dtype)}
    assert zipfile.ZipFile(path).infolist()[0].compress_type == zipfile.ZIP_DEFLATED
    _same(preds, Predictions.load(path))


def test_uint8_is_smaller_than_the_int16_files_of_earlier_versions(tmp_path: Path) -> None:
    preds = _predictions(10, n=1000)
    preds.save(tmp_path / "new.npz")
    buf = io.BytesIO()
    np.savez_compressed(buf, **{k: v.astype(np.int16)
                                for k, v in _arrays(tmp_path / "new.npz").items()})
    assert (tmp_path / "new.npz").stat().st_size < len(buf.getvalue())


def test_reads_the_int16_files_of_earlier_versions(tmp_path: Path) -> None:
    """Runs evaluated before the change hold int16 arrays: the same numbers come back."""
    preds = _predictions(10)
    path = tmp_path / "old.npz"
    np.savez_compressed(path, labels=preds.labels.numpy().astype(np.int16),
                        clean=preds.clean.numpy().astype(np.int16),
                        **{f"adv/{k}": v.numpy().astype(np.int16)
                           for k, v in preds.adversarial.items()})
    _same(preds, Predictions.load(path))


def test_empty_and_clean_only_predictions_round_trip(tmp_path: Path) -> None:
    empty = Predictions(labels=torch.zeros(0, dtype=torch.int64),
                        clean=torch.zeros(0, dtype=torch.int64))
    empty.save(tmp_path / "e.npz")
    assert _arrays(tmp_path / "e.npz")["labels"].dtype == np.uint8
    _same(empty, Predictions.load(tmp_path / "e.npz"))
    clean_only = Predictions(labels=torch.tensor([0, 3, 1]), clean=torch.tensor([0, 2, 1]))
    clean_only.save(tmp_path / "c.npz")
    _same(clean_only, Predictions.load(tmp_path / "c.npz"))


def test_a_negative_class_index_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    preds = Predictions(labels=torch.tensor([0, 1]), clean=torch.tensor([0, 1]),
                        adversarial={"FGSM": torch.tensor([1, -1])})
    with pytest.raises(ValueError, match="'adv/FGSM' hold a negative class index"):
        preds.save(tmp_path / "p.npz")
    assert not (tmp_path / "p.npz").exists()


@pytest.mark.parametrize(("arrays", "match"), [
    ({"labels": np.zeros(3, np.uint8), "clean": np.full(3, 0.5)}, "'clean' must be a 1-D integer"),
    ({"labels": np.zeros(3, np.uint8), "clean": np.zeros(3, np.int16) - 1}, "negative class"),
    ({"labels": np.zeros(3, np.uint8)}, "missing array 'clean'"),
    ({"labels": np.zeros(3, np.uint8), "clean": np.zeros(3, np.uint8),
      "PGD-20": np.zeros(3, np.uint8)}, "unexpected array 'PGD-20'"),
])
def test_bad_arrays_are_one_spat_error_naming_the_file(tmp_path: Path, arrays, match) -> None:
    path = tmp_path / "p.npz"
    np.savez_compressed(path, **arrays)
    with pytest.raises(SpatError, match=match) as e:
        Predictions.load(path)
    assert str(path) in str(e.value)
    path.write_bytes(b"not a zip")
    with pytest.raises(SpatError, match=r"^cannot read predictions .*p\.npz \(ValueError"):
        Predictions.load(path)
