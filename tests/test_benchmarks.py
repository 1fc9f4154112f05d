"""The benchmark compares like with like: the official-style reference (benchmarks/reference.py)
and our SPAT / TRADES / PGD-AT compute the same losses on the same inputs, initial weights and
attack noise, and the same PGD-20 evaluation; the harness's own check runs and refuses a mismatch.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from spat.attacks import cross_entropy, perturb, pgd
from spat.data import Split
from spat.evaluation.core import predict_under_attacks
from spat.methods import PGDAT, ThreatModel, spat, trades
from spat.models import build_model

REPO = Path(__file__).resolve().parents[1]


def _load(name: str):
    """benchmarks/<name>.py by path (the benchmarks folder need not be on sys.path)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", REPO / "benchmarks" /
                                                  f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


R = _load("reference")
CLASSES, K = 4, 3


@pytest.fixture(autouse=True)
def _one_thread():
    """These tiny problems run fastest on one thread, and on a busy shared machine two OpenMP
    threads can make them many times slower; the caller's setting is restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(head: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("small_cnn", num_classes=CLASSES, in_channels=1, image_size=(12, 12),
                       head=head).train()


def _batch(seed: int = 0, n: int = 16):
    g = torch.Generator().manual_seed(seed)
    x = (1.4 * torch.rand(n, 1, 12, 12, generator=g) - 0.2).clamp(0, 1)  # some 0s and 1s
    return x, torch.randint(0, CLASSES, (n,), generator=g)


def _no_dropout(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0


def _ours_and_ref(name: str):
    """(our method, our x_adv function, reference loss(model, x, y, opt, x_adv=None))."""
    if name == "pgd_at":
        t = ThreatModel(eps=8 / 255, step_size=2 / 255, steps=K, init="uniform")
        method = PGDAT(threat=t)
    else:
        t = ThreatModel(eps=0.031, step_size=0.007, steps=K, init="normal")
        method = spat(threat=t) if name == "spat" else trades(threat=t)

    def ours_adv(model, x, y, gen):
        if name == "pgd_at":
            return perturb(model, x, y, cross_entropy, eps=t.eps, step_size=t.step_size,
                           steps=K, init=t.init, generator=gen)
        return method.adversarial(model, x, y, gen)

    def ref_loss(model, x, y, opt, scale, gen, x_adv=None):
        if name == "spat":
            return R.spat_loss(model, x, y, opt, step_size=t.step_size, epsilon=t.eps,
                               perturb_steps=K, s=scale, num_classes=CLASSES, generator=gen,
                               x_adv=x_adv)
        if name == "trades":
            return R.trades_loss(model, x, y, opt, step_size=t.step_size, epsilon=t.eps,
                                 perturb_steps=K, generator=gen, x_adv=x_adv)
        return R.pgd_at_loss(model, x, y, opt, step_size=t.step_size, epsilon=t.eps,
                             perturb_steps=K, generator=gen, x_adv=x_adv)

    return method, ours_adv, ref_loss


def test_reference_cosine_head_is_official_and_same_function():
    model = _model("cosine").eval()
    ref, s = R.reference_model(model)
    assert s == 8.0
    x, _ = _batch()
    w = ref.head.linear.weight
    assert not torch.allclose(w.norm(dim=1), torch.ones(CLASSES))
    with torch.no_grad():
        torch.testing.assert_close(ref.eval()(x) * s, model(x), rtol=1e-5, atol=1e-5)
    # the official layer overwrites its weight with the row-normalised weight in forward
    torch.testing.assert_close(w.norm(dim=1), torch.ones(CLASSES))
    assert ref.head.linear.weight is w  # same Parameter object: the optimizer still holds it


@pytest.mark.parametrize("name", ["spat", "trades", "pgd_at"])
def test_reference_and_ours_losses_equal(name: str):
    """Same initial weights, inputs, attack noise and dropout masks → the same loss.

    On identical adversarial examples the loss (and, for linear heads, every parameter gradient)
    agrees to fp32 rounding; with each side running its own attack (the official one recomputing
    the clean forward at every step) the whole step's loss agrees to 1e-4: the adversarial
    examples are the same up to sign flips of gradient components at the fp32 rounding level.
    """
    head = "cosine" if name == "spat" else "linear"
    model = _model(head)
    if name == "trades":  # the official TRADES draws a third dropout mask in its robust term
        _no_dropout(model)
    x, y = _batch(1)
    method, ours_adv, ref_loss = _ours_and_ref(name)

    x_adv = ours_adv(model, x, y, torch.Generator().manual_seed(3))
    ref, s = R.reference_model(model)
    assert model.training
    torch.manual_seed(7)
    out = method(model, x, y, generator=torch.Generator().manual_seed(3))
    out.loss.backward()
    torch.manual_seed(7)
    whole = ref_loss(ref, x, y, R.make_optimizer(ref, 0.1), s, torch.Generator().manual_seed(3))
    torch.testing.assert_close(out.loss.detach(), whole.detach(), rtol=1e-4, atol=1e-6)

    ref2, s = R.reference_model(model)
    torch.manual_seed(7)
    given = ref_loss(ref2, x, y, R.make_optimizer(ref2, 0.1), s, None, x_adv=x_adv)
    torch.testing.assert_close(out.loss.detach(), given.detach(), rtol=1e-5, atol=1e-6)
    given.backward()
    assert ref2.training  # the official loss functions leave the model in train mode
    if head == "linear":
        for (pn, p), (_, q) in zip(model.named_parameters(), ref2.named_parameters(),
                                   strict=True):
            assert p.grad is not None and q.grad is not None
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5 * float(
                p.grad.abs().max()) + 1e-9, msg=pn)


@pytest.mark.parametrize("name", ["spat", "trades", "pgd_at"])
def test_reference_attack_equals_ours(name: str):
    """The official recompute-the-clean-logits-every-step attack finds the same examples."""
    model = _model("cosine" if name == "spat" else "linear")
    x, y = _batch(2)
    method, ours_adv, _ = _ours_and_ref(name)
    a = ours_adv(model, x, y, torch.Generator().manual_seed(5))
    ref, s = R.reference_model(model)
    ref.eval()
    t = method.threat
    b = R.reference_attack(name, ref, x, y, eps=t.eps, step_size=t.step_size, steps=K, scale=s,
                           generator=torch.Generator().manual_seed(5))
    assert float((a == b).float().mean()) > 0.99
    assert float((a - x).abs().max()) <= t.eps + 1e-6 and float((b - x).abs().max()) <= (
        t.eps + 1e-6)


def test_reference_evaluation_equals_ours():
    model = _model("linear").eval()
    ref, _ = R.reference_model(model)
    g = torch.Generator().manual_seed(0)
    split = Split(images=torch.randint(0, 256, (24, 1, 12, 12), generator=g, dtype=torch.uint8),
                  labels=torch.randint(0, CLASSES, (24,), generator=g))
    spec = pgd(8 / 255, steps=3)
    preds = predict_under_attacks(model, split, [spec], batch_size=16,
                                  generator=torch.Generator().manual_seed(1))
    loader = R.make_loader(split.images, split.labels, batch_size=16,
                           device=torch.device("cpu"), shuffle=False)
    clean, adv, n, _ = R.eval_adv_test(ref, torch.device("cpu"), loader, epsilon=spec.eps,
                                       num_steps=3, step_size=spec.step_size,
                                       generator=torch.Generator().manual_seed(1))
    assert n == 24
    assert clean == int(preds.correct(None).sum())
    assert adv == int(preds.correct(spec.name).sum())


def test_reference_data_path_gives_the_same_images():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (5, 3, 8, 8), generator=g, dtype=torch.uint8)
    loader = R.make_loader(images, torch.arange(5), batch_size=5, device=torch.device("cpu"),
                           shuffle=False)
    x, y = next(iter(loader))
    torch.testing.assert_close(x, images.float() / 255)
    assert y.tolist() == list(range(5))


def test_bench_fairness_check_runs_and_refuses_a_mismatch(monkeypatch):
    bench = _load("bench")
    args = ["--check-only", "--batch", "8", "--check-batch", "8", "--steps", "1"]
    assert bench.main([*args, "--methods", "spat,pgd_at"]) == 0
    # a reference that computes something else must stop the benchmark before any timing
    real = R.pgd_at_loss

    def wrong(*args, **kwargs):
        return 1.01 * real(*args, **kwargs)

    monkeypatch.setattr(bench.R, "pgd_at_loss", wrong)
    with pytest.raises(SystemExit, match="FAIRNESS CHECK FAILED"):
        bench.main([*args, "--methods", "pgd_at"])


def test_write_section_replaces_its_own_block(tmp_path: Path):
    common = _load("common")
    path = tmp_path / "RESULTS.md"
    path.write_text("# Results\n\nintro\n")
    common.write_section("a", "first", path)
    common.write_section("b", "other", path)
    common.write_section("a", "second", path)
    text = path.read_text()
    assert text.count("BEGIN a") == 1 and "second" in text and "first" not in text
    assert "other" in text and text.startswith("# Results\n\nintro")


def test_epoch_vs_reference_dry_run_and_refusals(capsys, tmp_path: Path):
    """The issue-23 epoch benchmark: its commands are built from one configuration (ours' flags
    carry every shared value, both sides one thread), bad arguments are refused, and a missing
    Fashion-MNIST is a clear skip that writes nothing."""
    ev = _load("epoch_vs_reference")
    assert ev.main(["--dataset", "digits", "--dry-run", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    ours = next(line for line in out.splitlines() if line.startswith("ours:"))
    for flag in ("--method spat", "--steps=10", "--eps=0.1", "--step-size=0.01",
                 "--batch-size=128", "--train-subset 1536", "--val-size 256", "--epochs 2",
                 "--threads 1"):
        assert flag in ours, flag
    assert "--child reference" in out
    with pytest.raises(SystemExit) as e:
        ev.parse_args(["--images", "100", "--batch", "64"])  # not whole batches
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        ev.parse_args(["--rounds", "0"])
    results = REPO / "benchmarks" / "RESULTS.md"
    before = results.read_text()
    assert ev.main(["--data-dir", str(tmp_path)]) == 0
    assert "skipped: no Fashion-MNIST" in capsys.readouterr().out
    assert results.read_text() == before


def test_epoch_vs_reference_tiny_run(tmp_path: Path):
    """One real round on the offline digits (2 batches of 32, K = 1): ours is the real
    `spat train` command, the reference its child process; the report's ratios are the
    per-round epoch times' ratios, both sides ran the same settings, the FLOP analysis runs."""
    ev = _load("epoch_vs_reference")
    out = tmp_path / "res.json"
    argv = ["--dataset", "digits", "--images", "64", "--batch", "32", "--val-images", "32",
            "--test-images", "16", "--steps", "1", "--val-steps", "1", "--eval-steps", "1",
            "--rounds", "1", "--matmul-size", "64", "--matmul-repeats", "1", "--no-write",
            "--json", str(out)]
    assert ev.main(argv) == 0
    import json

    res = json.loads(out.read_text())
    (r,) = res["rounds"]
    ours, ref = r["ours"], r["reference"]
    assert ours["resolved"] == ref["shared"] and ref["images"] == 64 and ref["val_images"] == 32
    for side in (ours, ref):
        assert side["train_s"] > 0 and side["val_s"] > 0 and side["wall_s"] > side["epoch_s"]
    assert res["ratios"]["epoch"]["median"] == pytest.approx(ours["epoch_s"] / ref["epoch_s"])
    assert res["ratios"]["train"]["median"] == pytest.approx(ours["train_s"] / ref["train_s"])
    f = res["flops"]
    assert f["steps_per_epoch"] == 2 and f["ours_train"] == pytest.approx(2 * f["ours_step"])
    assert f["ref_step"] >= f["ours_step"] > 0 and f["ref_val"] > 0
    assert res["matmul"]["fp32"] > 0 and res["floor"]["epoch"] > 0
