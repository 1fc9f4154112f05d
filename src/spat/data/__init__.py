"""Datasets as uint8 tensors, a seeded validation split, and device-side batching/augmentation.

``load_dataset(name, ...)`` returns a :class:`DataBundle` (CPU tensors, images ``uint8``
(N, C, H, W)); ``batches`` turns a :class:`Split` into float32 [0,1] mini-batches on a device;
``augment_batch`` applies the dataset's augmentation to a batch. Datasets: ``digits`` (offline
default, scikit-learn), ``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100``, ``svhn`` (the
official files in torchvision's layout, md5-verified) and ``npz`` (your own arrays), each one
:class:`DatasetRecord` of :data:`DATASETS` (loader, sizes, defaults).
"""

from spat.data.batching import augment_batch, batches, num_batches, shard_order
from spat.data.cifar import load_cifar
from spat.data.digits import load_digits_data
from spat.data.files import RestrictedUnpickler, safe_unpickle
from spat.data.mnist import load_mnist, read_idx
from spat.data.npz import load_npz
from spat.data.registry import (
    DATASETS,
    DatasetDefaults,
    DatasetRecord,
    channel_stats,
    dataset_class_names,
    dataset_names,
    dataset_record,
    load_dataset,
    split_validation,
    val_count,
)
from spat.data.svhn import load_svhn
from spat.data.types import DataBundle, DatasetInfo, RawDataset, Split

__all__ = [
    "DATASETS",
    "DataBundle",
    "DatasetDefaults",
    "DatasetInfo",
    "DatasetRecord",
    "RawDataset",
    "RestrictedUnpickler",
    "Split",
    "augment_batch",
    "batches",
    "channel_stats",
    "dataset_class_names",
    "dataset_names",
    "dataset_record",
    "load_cifar",
    "load_dataset",
    "load_digits_data",
    "load_mnist",
    "load_npz",
    "load_svhn",
    "num_batches",
    "read_idx",
    "safe_unpickle",
    "shard_order",
    "split_validation",
    "val_count",
]
