"""scikit-learn's ``load_digits``: 1,797 real 8x8 handwritten digits, available offline."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from spat.data.types import DIGIT_CLASSES, RawDataset

DIGITS_TEST_SIZE = 500
DIGITS_SPLIT_SEED = 0


def stratified_split(labels: np.ndarray, n_test: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed stratified split of ``range(len(labels))`` into (train, test) index arrays.

    Each class gets ``n_test * class_count / N`` test examples, rounded by largest remainder
    (ties to the smaller class id) so the total is exactly ``n_test``; within a class the test
    examples are the first ones of ``np.random.RandomState(seed).permutation(N)`` (the legacy
    numpy generator, whose stream is frozen across numpy versions). Both index arrays are sorted.
    """
    n = len(labels)
    order = np.random.RandomState(seed).permutation(n)
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * n_test / n
    take = np.floor(quota).astype(np.int64)
    extra = n_test - int(take.sum())
    by_remainder = np.argsort(-(quota - take), kind="stable")
    take[by_remainder[:extra]] += 1
    is_test = np.zeros(n, dtype=bool)
    permuted_labels = labels[order]
    for c, k in zip(classes, take, strict=True):
        is_test[order[permuted_labels == c][:k]] = True
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


@lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    # 17 grey levels 0..16 -> uint8 0..255 by round(v * 255 / 16) (round half to even)
    images = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None, :, :]
    labels = np.asarray(d.target, dtype=np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def load_digits_data() -> RawDataset:
    """scikit-learn's digits as (N, 1, 8, 8) ``uint8`` images, 10 classes "0".."9".

    The data has no official test split. This package uses one fixed split, independent of the
    run seed: a stratified split with internal seed 0 (see :func:`stratified_split`) into
    1,297 training and 500 test images. Pixel values are ``round(v * 255 / 16)`` of the original
    0..16 grey levels. No augmentation; family ``"digits"``.
    """
    images, labels = _digits_arrays()
    train_idx, test_idx = stratified_split(labels, DIGITS_TEST_SIZE, DIGITS_SPLIT_SEED)
    return RawDataset(
        name="digits",
        class_names=DIGIT_CLASSES,
        family="digits",
        augment="none",
        train_images=images[train_idx],
        train_labels=labels[train_idx],
        test_images=images[test_idx],
        test_labels=labels[test_idx],
    )
