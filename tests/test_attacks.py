"""The attack engine: ε-ball, [0,1] box, inputs untouched, mode/requires_grad restored, detached
outputs (hypothesis over many random inputs), and PGD against a hand-solvable linear model."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spat.attacks import (
    INITS,
    NORMS,
    OBJECTIVES,
    AttackSpec,
    attack_mode,
    cw_margin,
    fgsm,
    perturb,
    pgd,
)
from spat.errors import SpatError
from tests.conftest import TinyNet

PRESETS = {
    "fgsm": lambda eps, norm: fgsm(eps, norm=norm),
    "pgd": lambda eps, norm: pgd(eps, steps=3, norm=norm),
    "pgd_restarts": lambda eps, norm: pgd(eps, steps=2, restarts=2, norm=norm),
    "cw": lambda eps, norm: AttackSpec(name="CW-3", objective="cw", eps=eps, step_size=eps / 2,
                                       steps=3, norm=norm),
}


def _norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    flat = delta.flatten(1)
    return flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    eps=st.floats(0.0, 0.5),
    norm=st.sampled_from(NORMS),
    preset=st.sampled_from(sorted(PRESETS)),
    train_mode=st.booleans(),
)
def test_attack_properties(seed: int, eps: float, norm: str, preset: str, train_mode: bool):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = TinyNet()
    model.train(train_mode)
    model.fc.weight.requires_grad_(False)  # a mixed requires_grad pattern must come back as is
    flags = [p.requires_grad for p in model.parameters()]
    modes = [m.training for m in model.modules()]
    bn_stats = model.bn.running_mean.clone()
    x = torch.rand(5, 1, 8, 8, generator=g)
    x[0] = 0.0  # images on the box boundary
    x[1] = 1.0
    y = torch.randint(0, 3, (5,), generator=g)
    x0 = x.clone()
    x_adv = PRESETS[preset](eps, norm).run(model, x, y, generator=g)
    assert torch.equal(x, x0), "input modified"
    assert not x_adv.requires_grad and x_adv.grad_fn is None
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert float(_norm(x_adv - x, norm).max()) <= eps * (1 + 1e-5) + 1e-6
    assert [p.requires_grad for p in model.parameters()] == flags
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(model.bn.running_mean, bn_stats), "BatchNorm statistics updated"
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("norm", NORMS)
def test_random_start_in_ball(init: str, norm: str):
    from spat.attacks import Geometry

    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 4, 4, generator=g)
    x0 = Geometry(norm, 0.1).init(x, init, 0.001, g)
    assert float(_norm(x0 - x, norm).max()) <= 0.1 + 1e-6
    assert 0.0 <= float(x0.min()) and float(x0.max()) <= 1.0
    if init == "none":
        assert torch.equal(x0, x)
    if init == "uniform" and norm == "linf":  # fills the cube: some coordinates near ±ε
        assert float((x0 - x).abs().max()) > 0.09


def test_attack_mode_restores_after_exception():
    model = TinyNet().train()
    with pytest.raises(RuntimeError), attack_mode(model):
        assert not model.training
        assert not any(p.requires_grad for p in model.parameters())
        raise RuntimeError("boom")
    assert model.training and all(p.requires_grad for p in model.parameters())


def _linear_model(w: torch.Tensor, b: torch.Tensor) -> torch.nn.Module:
    lin = torch.nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.copy_(b)
    return torch.nn.Sequential(torch.nn.Flatten(), lin)


@pytest.mark.parametrize("objective", ["ce", "cw"])
def test_pgd_linf_solves_linear_classifier(objective: str):
    """Two-class linear model: CE and the CW margin are monotone in the margin
    m(x) = (w_y − w_o)ᵀx + b_y − b_o, so the worst L∞ perturbation is the corner
    δ* = −ε·sign(w_y − w_o) (inside the box when x is away from 0 and 1), with margin drop
    ε·‖w_y − w_o‖₁. PGD with η = ε/4 and 10 steps must land exactly on it."""
    g = torch.Generator().manual_seed(1)
    d, eps = 12, 0.05
    w = torch.randn(2, d, generator=g)
    b = torch.randn(2, generator=g)
    model = _linear_model(w, b)
    x = 0.2 + 0.6 * torch.rand(6, 1, 3, 4, generator=g)
    y = torch.tensor([0, 1, 0, 1, 0, 1])
    x_adv = perturb(model, x, y, OBJECTIVES[objective], eps=eps, step_size=eps / 4, steps=10,
                    init="uniform", generator=g)
    wy = w[y]
    wo = w[1 - y]
    expected = x.flatten(1) - eps * torch.sign(wy - wo)
    torch.testing.assert_close(x_adv.flatten(1), expected, atol=1e-6, rtol=0)
    margin = lambda z: ((wy - wo) * z).sum(1) + b[y] - b[1 - y]  # noqa: E731
    drop = margin(x.flatten(1)) - margin(x_adv.flatten(1))
    torch.testing.assert_close(drop, eps * (wy - wo).abs().sum(1), atol=1e-5, rtol=1e-5)


def test_pgd_l2_solves_linear_classifier():
    """L2: the worst perturbation is δ* = −ε·(w_y − w_o)/‖w_y − w_o‖₂."""
    g = torch.Generator().manual_seed(2)
    w = torch.randn(2, 12, generator=g)
    model = _linear_model(w, torch.zeros(2))
    x = 0.3 + 0.4 * torch.rand(4, 1, 3, 4, generator=g)
    y = torch.tensor([0, 1, 1, 0])
    eps = 0.1
    x_adv = perturb(model, x, y, OBJECTIVES["ce"], eps=eps, step_size=eps / 2, steps=8,
                    norm="l2", init="none")
    direction = w[y] - w[1 - y]
    expected = x.flatten(1) - eps * direction / direction.norm(dim=1, keepdim=True)
    torch.testing.assert_close(x_adv.flatten(1), expected, atol=1e-5, rtol=0)


def test_fgsm_is_one_signed_step():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(2, 12, generator=g)
    model = _linear_model(w, torch.zeros(2))
    x = 0.5 * torch.ones(2, 1, 3, 4)
    y = torch.tensor([0, 1])
    x_adv = fgsm(0.1).run(model, x, y)
    expected = x.flatten(1) - 0.1 * torch.sign(w[y] - w[1 - y])
    torch.testing.assert_close(x_adv.flatten(1), expected)


def test_restarts_keep_worst_case_per_example():
    """With restarts, each example keeps a misclassifying start if any restart found one."""
    torch.manual_seed(0)
    model = TinyNet().eval()
    x = torch.rand(32, 1, 8, 8)
    y = model(x).argmax(1)  # all clean-correct by construction
    single = [pgd(0.05, steps=1, step_size=0.05).run(model, x, y,
                                                      generator=torch.Generator().manual_seed(0))]
    multi = pgd(0.05, steps=1, step_size=0.05, restarts=3).run(
        model, x, y, generator=torch.Generator().manual_seed(0))
    # the restart attack's first restart draws the same start as single[0] (same seed), and the
    # worst case over restarts can only add fooled examples to it
    first = single[0]
    fooled_first = model(first).argmax(1) != y
    fooled_multi = model(multi).argmax(1) != y
    assert bool((fooled_multi | ~fooled_first).all())
    assert int(fooled_multi.sum()) >= int(fooled_first.sum())


def test_cw_margin_known_values():
    logits = torch.tensor([[2.0, 1.0, -1.0], [0.0, 3.0, 1.0]])
    y = torch.tensor([0, 0])
    torch.testing.assert_close(cw_margin(logits, y), torch.tensor([-1.0, 3.0]))


def test_bad_arguments():
    model = TinyNet()
    x, y = torch.rand(2, 1, 8, 8), torch.tensor([0, 1])
    with pytest.raises(SpatError, match="steps"):
        perturb(model, x, y, OBJECTIVES["ce"], eps=0.1, step_size=0.1, steps=0)
    with pytest.raises(SpatError, match="valid: linf, l2"):
        perturb(model, x, y, OBJECTIVES["ce"], eps=0.1, step_size=0.1, steps=1, norm="l3")
    with pytest.raises(SpatError, match="objective"):
        AttackSpec(name="x", objective="hinge", eps=0.1, step_size=0.1, steps=1)
    assert math.isclose(pgd(8 / 255).step_size, 2 / 255)
