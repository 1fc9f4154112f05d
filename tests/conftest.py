"""Shared test fixtures: repository paths, the shared data folder, small models."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
#: The real data (MNIST, Fashion-MNIST in torchvision's layout, ``<dir>/MNIST/raw/*.gz``): the
#: folder named by the environment variable ``SPAT_TEST_DATA``, else the project's shared/data
#: folder beside the checkout.
DEFAULT_SHARED_DATA = REPO.parent / "shared" / "data"
SHARED_DATA = Path(os.environ.get("SPAT_TEST_DATA") or DEFAULT_SHARED_DATA)
_FOLDERS = {"MNIST": "mnist", "FashionMNIST": "fashion_mnist"}

# The fast-path calibration's cache (spat.utils.calibration) goes to a folder of this test
# session, never to the user's ~/.cache; tests that look at the cache point it at tmp_path.
os.environ["SPAT_CACHE_DIR"] = tempfile.mkdtemp(prefix="spat-test-cache-")
atexit.register(shutil.rmtree, os.environ["SPAT_CACHE_DIR"], ignore_errors=True)

# One intra-op thread per pytest-xdist worker (the suite runs with -n 2 on 2 cores): two workers
# with two threads each oversubscribe the cores and run slower than one thread each.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


def missing_data_reason(name: str) -> str:
    """Why a test of the real data ``name`` ("MNIST", "FashionMNIST") skips, and how to fill the
    folder: one download (torchvision's, checksums verified), then ``SPAT_TEST_DATA``."""
    which = _FOLDERS.get(name, name.lower())
    return (f"real data not found at {SHARED_DATA / name / 'raw'}; download it once with "
            f"python3 -c \"from spat.data import load_dataset; load_dataset('{which}', "
            f"data_dir='DIR', download=True)\" and set SPAT_TEST_DATA=DIR (default "
            f"{DEFAULT_SHARED_DATA})")


def shared_data_or_skip(name: str = "FashionMNIST") -> Path:
    """The real data folder (:data:`SHARED_DATA`), or skip the test saying how to fill it."""
    if not (SHARED_DATA / name / "raw").is_dir():
        pytest.skip(missing_data_reason(name))
    return SHARED_DATA


@pytest.fixture
def shared_data() -> Path:
    return shared_data_or_skip("FashionMNIST")


class TinyNet(torch.nn.Module):
    """A small conv net with BatchNorm and dropout: both are mode-dependent, so mode bugs show."""

    def __init__(self, channels: int = 1, num_classes: int = 3, size: int = 8) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.drop = torch.nn.Dropout(0.5)
        self.fc = torch.nn.Linear(4 * size * size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(torch.relu(self.bn(self.conv(x))))
        return self.fc(h.flatten(1))


def linear_problem(n: int = 24) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A random linear 10-class model on 8×8 images in eval mode, n images and their labels:
    the model's own predictions except the first 3, made wrong on purpose (clean mistakes)."""
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(10, 64, generator=g))
        model[1].bias.zero_()
    model.eval()
    x = torch.rand(n, 1, 8, 8, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:3] = (y[:3] + 1) % 10
    return model, x, y


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small digits PGD-AT model that is right on most clean examples and wrong on some
    attacked ones, so the predictions under attack are worth comparing."""
    from spat.config import TrainConfig
    from spat.train.training import train

    out = tmp_path_factory.mktemp("runs")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        s = train(TrainConfig(out_dir=str(out), name="r", epochs=4, train_subset=600,
                              val_size=64, steps=3, val_steps=1, test_steps=1, test_subset=50,
                              device="cpu"), progress=False, log=lambda _s: None)
    finally:
        torch.set_num_threads(n)
    return s.run_dir


@pytest.fixture
def torch_one_thread():
    """One intra-op torch thread for the test, restored after: tiny models run faster on one,
    and two spinning OpenMP threads per xdist worker thrash a 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train_finished_run(tmp_path_factory: pytest.TempPathFactory, args: list[str]) -> Path:
    """Train one tiny run with ``spat train ARGS`` on one thread, in a fresh temporary folder,
    and return its directory (for module-scoped fixtures that train once and hand out copies)."""
    from spat.cli import main

    out = tmp_path_factory.mktemp("runs")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", *args, "--out-dir", str(out), "--name", "done"]) == 0
    finally:
        torch.set_num_threads(n)
    return out / "done"


@pytest.fixture
def run(finished_run: Path, tmp_path: Path) -> Path:
    """A copy of the module's ``finished_run`` fixture (its own tiny trained run), for a test
    that may change or damage it."""
    import shutil

    dst = tmp_path / "runs" / "r"
    shutil.copytree(finished_run, dst)
    return dst
