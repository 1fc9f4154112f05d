"""Training losses against hand computations on tiny inputs, the cached-clean-logits attack
against the official recompute-every-step formulation, gradients and descent for every method."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from spat.attacks import kl_divergence, per_class_kl, perturb
from spat.errors import SpatError
from spat.methods import (
    MART,
    METHODS,
    ConsistencyAT,
    ThreatModel,
    build_method,
    self_paced_logits,
    spat,
    trades,
)
from spat.methods.spat import hcp_ecp
from spat.models import build_model


def _model(head: str = "cosine", seed: int = 0, classes: int = 3):
    torch.manual_seed(seed)
    return build_model("small_cnn", num_classes=classes, in_channels=1, image_size=(8, 8),
                       head=head, cosine_scale=8.0)


def _batch(seed: int = 0, n: int = 16, classes: int = 3):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, classes, (n,), generator=g)


def test_self_paced_logits_by_hand():
    s, m = 8.0, 0.2
    z = [[0.5, -0.1, 0.3], [0.9, 0.8, -0.7]]  # cosines
    y = [2, 0]
    logits = torch.tensor(z) * s
    out = self_paced_logits(logits, torch.tensor(y), s, m)
    for i in range(2):
        for j in range(3):
            if j == y[i]:
                expected = s * (1 + m - z[i][j]) * z[i][j]
            else:
                expected = s * (z[i][j] + m) * z[i][j]
            assert abs(float(out[i, j]) - expected) < 1e-6


def test_per_class_kl_and_hcp_ecp_by_hand_with_negative_terms():
    p = [0.7, 0.2, 0.1]
    q = [0.5, 0.4, 0.1]
    clean = torch.log(torch.tensor([p]))
    adv = torch.log(torch.tensor([q]))
    k = [pj * math.log(pj / qj) for pj, qj in zip(p, q, strict=True)]
    assert k[1] < 0  # a negative per-class term
    torch.testing.assert_close(per_class_kl(clean, adv)[0], torch.tensor(k), atol=1e-6, rtol=0)
    assert abs(float(kl_divergence(clean, adv)[0]) - sum(k)) < 1e-6
    n = 0.2
    expected = sum(kj * (kj + n) for kj in k)
    assert abs(float(hcp_ecp(clean, adv, n)[0]) - expected) < 1e-6
    # = n·KL + Σ k_j²
    assert abs(expected - (n * sum(k) + sum(kj * kj for kj in k))) < 1e-12


def test_spat_loss_matches_spec():
    """L = CE(z̃(x), y) + β·mean_i Σ_j k_ij(k_ij + n), with z̃ by the spec's formulas."""
    model = _model().eval()  # eval: dropout would make two forwards differ
    x, y = _batch()
    method = spat(beta=6.0, m=0.2, n=0.2)
    onehot = F.one_hot(y, 3).bool()
    x_adv = method.adversarial(model, x, y, torch.Generator().manual_seed(0))
    out = method(model, x, y, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, logits_adv = model(x), model(x_adv)
    z = logits / 8.0
    z_mod = 8.0 * torch.where(onehot, (1.2 - z) * z, (z + 0.2) * z)
    loss_acc = F.cross_entropy(z_mod, y)
    p, q = logits.softmax(1), logits_adv.softmax(1)
    k = p * (p.log() - q.log())
    loss_rob = (k * (k + 0.2)).sum(1).mean()
    torch.testing.assert_close(out.parts["loss_nat"], loss_acc, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out.parts["loss_rob"], loss_rob, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out.loss.detach(), loss_acc + 6.0 * loss_rob, atol=1e-5, rtol=1e-6)


def test_trades_loss_matches_paper():
    model = _model(head="linear").eval()
    x, y = _batch(1)
    method = trades(beta=6.0)
    out = method(model, x, y, generator=torch.Generator().manual_seed(0))
    x_adv = method.adversarial(model, x, y, torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, logits_adv = model(x), model(x_adv)
    # TRADES' reference: KLDivLoss(sum)(log_softmax(adv), softmax(clean)) / batch
    kl = F.kl_div(F.log_softmax(logits_adv, 1), F.softmax(logits, 1), reduction="sum") / len(x)
    expected = F.cross_entropy(logits, y) + 6.0 * kl
    torch.testing.assert_close(out.loss.detach(), expected, atol=1e-5, rtol=1e-5)


def test_mart_loss_matches_reference_formula():
    model = _model(head="linear").eval()
    x, y = _batch(2)
    method = MART(beta=6.0)
    g = torch.Generator().manual_seed(0)
    out = method(model, x, y, generator=g)
    t = method.threat
    from spat.attacks import cross_entropy

    x_adv = perturb(model, x, y, cross_entropy, eps=t.eps, step_size=t.step_size, steps=t.steps,
                    init=t.init, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, logits_adv = model(x), model(x_adv)
    # by hand, example by example, as the MART reference code computes it
    total_adv, total_rob = 0.0, 0.0
    for i in range(len(x)):
        pa = logits_adv[i].softmax(0)
        pn = logits[i].softmax(0)
        yi = int(y[i])
        order = sorted(range(3), key=lambda j: float(pa[j]))
        wrong = order[-2] if order[-1] == yi else order[-1]
        total_adv += -math.log(float(pa[yi])) - math.log(1.0001 - float(pa[wrong]) + 1e-12)
        kl = sum(float(pn[j]) * math.log(float(pn[j]) / float(pa[j])) for j in range(3))
        total_rob += kl * (1.0000001 - float(pn[yi]))
    expected = total_adv / len(x) + 6.0 * total_rob / len(x)
    assert abs(float(out.loss.detach()) - expected) < 1e-4


def test_cached_clean_logits_equal_official_recompute():
    """The attack with clean logits computed once gives exactly the adversarial examples of the
    official formulation, which recomputes model(x) at every step (eval mode throughout)."""
    model = _model().train()
    x, y = _batch(3)
    method = spat()
    ours = method.adversarial(model, x, y, torch.Generator().manual_seed(5))
    # the official loop, written out
    model.eval()
    g = torch.Generator().manual_seed(5)
    x_adv = (x + 0.001 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    t = method.threat
    for _ in range(t.steps):
        x_adv.requires_grad_(True)
        with torch.enable_grad():
            loss = hcp_ecp(model(x), model(x_adv), method.n).sum()
        grad = torch.autograd.grad(loss, x_adv)[0]
        x_adv = x_adv.detach() + t.step_size * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - t.eps), x + t.eps).clamp(0, 1)
    model.train()
    assert torch.equal(ours, x_adv)


ALL = sorted(METHODS)


def _method_for(name: str):
    threat = ThreatModel(eps=0.1, step_size=0.03, steps=3,
                         init="uniform" if name == "pgd_at" else "normal")
    return build_method(name, threat=threat)


@pytest.mark.parametrize("name", ALL)
def test_gradients_reach_every_parameter(name: str):
    model = _model(head="cosine").train()
    x, y = _batch(4)
    out = _method_for(name)(model, x, y, generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert float(p.grad.abs().sum()) > 0, pname
    assert model.training  # the method left the model in the caller's mode


@pytest.mark.parametrize("name", ALL)
def test_few_steps_lower_the_loss(name: str):
    model = _model(head="cosine", seed=1).train()
    model.backbone.apply(lambda m: setattr(m, "p", 0.0) if isinstance(m, torch.nn.Dropout)
                         else None)
    x, y = _batch(5, n=32)
    method = _method_for(name)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def loss_now() -> float:
        return float(method(model, x, y, generator=torch.Generator().manual_seed(0)).loss.detach())

    before = loss_now()
    for _ in range(15):
        out = method(model, x, y, generator=torch.Generator().manual_seed(0))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert loss_now() < before


@pytest.mark.parametrize("name", ["pgd_at", "trades", "mart"])
def test_spat_parts_switch_on_other_methods(name: str):
    model = _model(head="cosine").eval()
    x, y = _batch(6)
    threat = ThreatModel(eps=0.1, step_size=0.03, steps=2)
    plain = build_method(name, threat=threat)
    parts = build_method(name, threat=threat, self_paced_ce=True,
                         hcp_ecp=None if name == "pgd_at" else True)
    a = plain(model, x, y, generator=torch.Generator().manual_seed(0)).loss
    b = parts(model, x, y, generator=torch.Generator().manual_seed(0)).loss
    assert not torch.isclose(a, b)


def test_part_errors():
    with pytest.raises(SpatError, match="consistency term"):
        build_method("pgd_at", hcp_ecp=True)
    with pytest.raises(SpatError, match="unknown method"):
        build_method("fast_at")
    model = _model(head="linear")
    x, y = _batch()
    with pytest.raises(SpatError, match="cosine head"):
        build_method("pgd_at", self_paced_ce=True)(model, x, y)
    with pytest.raises(SpatError, match="cosine head"):
        spat()(model, x, y)


def test_spat_is_trades_with_parts():
    s = spat()
    assert isinstance(s, ConsistencyAT) and s.self_paced_ce and s.hcp_ecp
    assert (s.beta, s.m, s.n) == (6.0, 0.2, 0.2)
    assert (s.threat.eps, s.threat.step_size, s.threat.steps, s.threat.init) == (
        0.031, 0.007, 10, "normal")
