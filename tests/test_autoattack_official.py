"""Our AutoAttack driver (:func:`spat.attacks.autoattack.run_autoattack`, which runs the
sub-attacks itself to save a resumable state) against the official loop,
``pyautoattack.AutoAttack.run_standard_evaluation`` (Croce & Hein, arXiv 2003.01690): the same
sub-attacks on the same still-robust points in the same batches with the same seeds must give
the same adversarial images and predictions, bit for bit."""

from __future__ import annotations

import pytest
import torch

from spat.attacks.autoattack import run_autoattack
from tests.conftest import linear_problem

pyautoattack = pytest.importorskip("pyautoattack")


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
@pytest.mark.parametrize("version", ["standard", "fast"])
def test_same_result_as_run_standard_evaluation(version: str, device: str) -> None:
    model, x, y = linear_problem()
    model, x, y = model.to(device), x.to(device), y.to(device)
    eps, seed, bs = 0.03, 0, 16  # 2 batches of robust points: the batching is exercised
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ours = run_autoattack(model, x, y, eps=eps, norm="Linf", version=version, seed=seed,
                              batch_size=bs, return_adv=True, device=device)
        aa = pyautoattack.AutoAttack(model, norm="Linf", eps=eps, seed=seed,
                                     version="standard", device=device)
        aa.verbose = False
        if version == "fast":  # the standard settings, the first two sub-attacks
            aa.attacks_to_run = ["apgd-ce", "apgd-t"]
        x_adv, y_adv = aa.run_standard_evaluation(x, y, batch_size=bs)
    finally:
        torch.set_num_threads(n)
    x, y, y_adv, x_adv = x.cpu(), y.cpu(), y_adv.cpu(), x_adv.cpu()  # compared on the host
    model = model.cpu()
    assert torch.equal(ours.predictions.cpu(), y_adv)
    assert ours.x_adv is not None and torch.equal(ours.x_adv.cpu(), x_adv)
    robust = ours.broken_by.cpu() == -1
    assert torch.equal(robust, y_adv == y)
    # the attack found something on the clean-correct points, and kept the clean mistakes
    assert 0 < int((ours.broken_by > 0).sum()) and torch.equal(ours.broken_by.cpu() == 0,
                                                                 model(x).argmax(1) != y)
    last = ours.sub_attacks[-1]
    assert ours.robust_accuracy[last] == pytest.approx(float(robust.float().mean()))
