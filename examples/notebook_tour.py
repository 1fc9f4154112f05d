"""A tour of spat's Python API, written as notebook cells (``# %%``): train PGD-AT on the
digits with a tiny budget (``"method": "spat"`` trains SPAT), load the run back, evaluate a
classifier written here in plain PyTorch, and find its hard class pairs. Runs on a CPU in well
under a minute:

    OMP_NUM_THREADS=1 python examples/notebook_tour.py [OUT_DIR]

The digits (8x8 images of 0-9, 1797 examples) ship with scikit-learn: no download.
"""

# %% Setup: where the run goes (a temporary folder unless given)
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

import spat

torch.manual_seed(0)
out_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="spat-tour-"))

# %% 1. Train: a dict of TrainConfig fields (a TrainConfig works too); the rest are defaults
result = spat.train({
    "dataset": "digits", "method": "pgd_at", "epochs": 3, "train_subset": 600,
    "schedule": "constant",
    "test_subset": 200, "val_steps": 2, "test_steps": 5, "device": "cpu",
    "out_dir": str(out_dir), "name": "tour",
})
print("== trained")
print(f"run {result.run_dir}: clean {result.test_clean_acc:.3f}, "
      f"{result.test_attack} {result.test_robust_acc:.3f}")

# %% 2. Load the run back: a frozen dataclass, the model in eval mode
run = spat.load_run(result.run_dir)
print("== loaded")
print(f"{run.config.method} on {run.config.dataset}, {run.config.model} with a "
      f"{run.config.head} head, checkpoint {run.checkpoint.name} (epoch {run.epoch}), "
      f"classes {', '.join(run.info.class_names)}")

# %% 3. A classifier of our own, trained a few steps in plain PyTorch (no spat involved)
from spat.data import load_dataset  # noqa: E402  (a notebook imports where it needs to)

data = load_dataset("digits")
x_train, y_train = data.train.images[:600].float(), data.train.labels[:600]
if x_train.max() > 1:  # uint8 pixels -> [0, 1]
    x_train = x_train / 255


class TinyCNN(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
                                      nn.Flatten(), nn.Linear(16 * 8 * 8, 64), nn.ReLU())
        self.fc = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


mine = TinyCNN()
opt = torch.optim.Adam(mine.parameters(), lr=3e-3)
for _ in range(60):
    idx = torch.randint(0, len(x_train), (64,))
    loss = nn.functional.cross_entropy(mine(x_train[idx]), y_train[idx])
    opt.zero_grad()
    loss.backward()
    opt.step()
mine.eval()

# %% 4. Evaluate it: any nn.Module, plain tensors, on the model's device
x_test, y_test = data.test.images[:200], data.test.labels[:200]
report = spat.evaluate(mine, x_test, y_test, eps=0.1, attacks=["fgsm", "pgd20"])
print("== evaluated")
print(f"clean {report.clean_accuracy:.3f}; "
      + "; ".join(f"{k} {v:.3f}" for k, v in report.accuracies.items())
      + f"; worst case {report.robust_accuracy:.3f}")

# %% 5. Hard class pairs of our model under PGD-20, with its last Linear layer's weight rows
pairs = spat.hard_pairs(report.predictions, run.info.class_names, model=mine, attack="pgd20")
print("== hard pairs (our model)")
print(pairs.text(top=3))

# %% 6. ... and of the trained run, evaluated the same way
run_pairs = spat.hard_pairs(
    spat.evaluate(run.model, x_test, y_test, eps=0.1, attacks="pgd20").predictions,
    run.info.class_names, model=run.model)
print("== hard pairs (trained run)")
print(run_pairs.text(top=3))
