"""The data containers: dataset metadata, one split of images, and a train/val/test bundle."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

AUGMENTS = ("crop_flip", "none")
#: The class names of the ten-digit datasets (digits, MNIST, SVHN).
DIGIT_CLASSES = tuple(str(i) for i in range(10))


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and a threat model need to know about a dataset.

    ``mean``/``std`` are per-channel statistics of the training images (after the validation
    split was removed) in [0,1] pixel units; models normalise with them internally, attacks work
    in [0,1] units. ``augment`` is ``"crop_flip"`` (random crop with 4 px zero padding plus a
    horizontal flip, for 32x32 colour data) or ``"none"``.
    ``family`` (``"cifar" | "svhn" | "mnist" | "digits" | "custom"``) names the loader that
    produced the data; it is recorded in a run's ``data.json`` as provenance and nothing
    branches on it (threat-model defaults come from the dataset name, see
    :data:`spat.data.registry.DATASETS`).
    """

    name: str
    num_classes: int
    channels: int
    height: int
    width: int
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str
    family: str


@dataclass(eq=False)
class Split:
    """One split of a dataset, on the CPU.

    ``images``: ``uint8`` tensor of shape (N, C, H, W), values 0..255 (pixel value x/255 in
    [0,1]). ``labels``: ``int64`` tensor of shape (N,), values 0..K-1. Equality is identity
    (tensors have no boolean ``==``), so a split can be a dict key.
    """

    images: torch.Tensor
    labels: torch.Tensor
    # device -> (key, images, labels): the split moved to an accelerator once, reused by
    # ``batches``; the key notices when ``images``/``labels`` were replaced.
    _device_copies: dict[str, tuple[tuple[int, ...], torch.Tensor, torch.Tensor]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def on_device(self, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images, labels)`` on ``device``; the copy to an accelerator is made once and kept.

        The images stay ``uint8`` (one byte per pixel of device memory). On the CPU the tensors
        themselves are returned. The kept copy is refreshed when ``images``/``labels`` are
        replaced by other tensors, but not after an in-place change of them.
        """
        dev = torch.device(device)
        if dev.type == "cpu":
            return self.images, self.labels
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        key = (
            self.images.data_ptr(), self.labels.data_ptr(), *self.images.shape,
            *self.labels.shape,
        )
        hit = self._device_copies.get(str(dev))
        if hit is not None and hit[0] == key:
            return hit[1], hit[2]
        images = self.images.to(dev)
        labels = self.labels.to(dev)
        self._device_copies[str(dev)] = (key, images, labels)
        return images, labels


@dataclass
class DataBundle:
    """A dataset ready for training: metadata plus train, validation and test splits.

    ``val`` is held out from the *original training set* (never from the test set) and may be
    empty (N == 0).
    """

    info: DatasetInfo
    train: Split
    val: Split
    test: Split


@dataclass
class RawDataset:
    """What a dataset loader returns: numpy arrays before the validation split and statistics.

    Images are ``uint8`` arrays of shape (N, C, H, W), labels ``int64`` arrays of shape (N,).
    """

    name: str
    class_names: tuple[str, ...]
    family: str
    augment: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
