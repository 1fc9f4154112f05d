"""The warm-ups of issue 11 (not part of the official SPAT, both off by default): a linear β ramp
(``beta_ramp_epochs``) and the self-paced CE switched on after N epochs (``self_paced_after``).

Definitions tested here (spat.methods.spat.ramped_beta, self_paced_active), in 1-based epochs e:
β_e = β · min(1, (e − 1)/N), so N = 4, β = 6 gives 0, 1.5, 3, 4.5, 6 at epochs 1..5; the CE is
the plain CE on the logits s·z in epochs 1..N and SPAT's self-paced CE from epoch N + 1. The
loop hands the method each epoch's values through the ``for_epoch`` hook, so a resumed run is
the uninterrupted one; with both at 0 the method (and so every loss) is the official one.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from spat.config import TrainConfig, config_from_dict, load_config_file
from spat.errors import SpatError
from spat.methods import MART, PGDAT, SPAT, ConsistencyAT, Standard, build_method, for_epoch
from spat.methods.spat import ramped_beta, self_paced_active, self_paced_logits
from spat.models import build_model
from spat.study.cell import config_mismatch

S = 8.0  # the cosine head's scale s


def _model(head: str = "cosine"):
    torch.manual_seed(0)
    return build_model("small_cnn", num_classes=3, in_channels=1, image_size=(8, 8), head=head,
                       cosine_scale=S).eval()  # eval: dropout would make two forwards differ


def _batch():
    g = torch.Generator().manual_seed(0)
    return torch.rand(16, 1, 8, 8, generator=g), torch.randint(0, 3, (16,), generator=g)


def _run(method, model, x, y):
    return method(model, x, y, generator=torch.Generator().manual_seed(0))


# ------------------------------------------------------------------------- the schedules


def test_beta_ramp_values_by_hand() -> None:
    # epochs 1..6 (0-based 0..5) with N = 4, β = 6: 0, β/4, 2β/4, 3β/4, β, β
    assert [ramped_beta(6.0, 4, e) for e in range(6)] == [0.0, 1.5, 3.0, 4.5, 6.0, 6.0]
    assert [ramped_beta(6.0, 0, e) for e in range(3)] == [6.0, 6.0, 6.0]  # off
    method = SPAT(beta_ramp_epochs=4)
    assert [for_epoch(method, e).beta for e in range(6)] == [0.0, 1.5, 3.0, 4.5, 6.0, 6.0]
    assert MART(beta=5.0, beta_ramp_epochs=2).for_epoch(1).beta == 2.5  # MART's λ
    # the epoch's method is a plain method: its warm-up fields are 0, the rest unchanged
    e1 = method.for_epoch(1)
    assert isinstance(e1, SPAT) and e1.beta_ramp_epochs == 0 and e1.for_epoch(0) is e1
    assert (e1.m, e1.n, e1.self_paced_ce, e1.hcp_ecp, e1.threat) == (
        method.m, method.n, True, True, method.threat)


def test_self_paced_switch_values() -> None:
    assert [self_paced_active(2, e) for e in range(4)] == [False, False, True, True]
    method = SPAT(self_paced_after=2)
    assert [method.for_epoch(e).self_paced_ce for e in range(4)] == [False, False, True, True]
    assert all(method.for_epoch(e).hcp_ecp for e in range(4))  # only the CE is switched


def test_defaults_are_off_and_the_official_method_is_unchanged() -> None:
    for cls in (SPAT, ConsistencyAT, MART, PGDAT, Standard):
        m = cls()
        assert m.self_paced_after == 0
        assert for_epoch(m, 0) is m and for_epoch(m, 7) is m  # the very same method object
    assert SPAT().beta_ramp_epochs == 0 and MART().beta_ramp_epochs == 0
    # a method without the hook is used as it is
    plain = object()
    assert for_epoch(plain, 3) is plain


# ------------------------------------------------------------------------- the losses


def test_self_paced_after_uses_plain_ce_on_s_z_then_the_self_paced_ce() -> None:
    model, (x, y) = _model(), _batch()
    method = SPAT(self_paced_after=2)
    with torch.no_grad():
        logits = model(x)  # s·z
    plain = F.cross_entropy(logits, y)
    self_paced = F.cross_entropy(self_paced_logits(logits, y, S, 0.2), y)
    assert not torch.allclose(plain, self_paced)  # the two are distinguishable here
    for epoch in (0, 1):  # epochs 1-2
        out = _run(method.for_epoch(epoch), model, x, y)
        torch.testing.assert_close(out.parts["loss_nat"], plain, atol=1e-6, rtol=1e-6)
    out3 = _run(method.for_epoch(2), model, x, y)  # epoch 3
    torch.testing.assert_close(out3.parts["loss_nat"], self_paced, atol=1e-6, rtol=1e-6)
    # after the warm-up: bitwise the official SPAT's loss
    assert torch.equal(out3.loss, _run(SPAT(), model, x, y).loss)


def test_beta_ramp_losses() -> None:
    model, (x, y) = _model(), _batch()
    method = SPAT(beta_ramp_epochs=4)
    official = _run(SPAT(), model, x, y)
    nat, rob = official.parts["loss_nat"], official.parts["loss_rob"]
    assert rob > 0
    for epoch, frac in enumerate((0.0, 0.25, 0.5, 0.75)):
        out = _run(method.for_epoch(epoch), model, x, y)
        assert torch.equal(out.parts["loss_nat"], nat) and torch.equal(out.parts["loss_rob"], rob)
        torch.testing.assert_close(out.loss, nat + 6.0 * frac * rob, atol=1e-6, rtol=1e-6)
    assert torch.equal(_run(method.for_epoch(0), model, x, y).loss, nat)  # β = 0: the CE alone
    assert torch.equal(_run(method.for_epoch(4), model, x, y).loss, official.loss)  # epoch 5


def test_self_paced_after_on_pgd_at_with_the_self_paced_ce() -> None:
    model, (x, y) = _model(), _batch()
    method = PGDAT(self_paced_ce=True, self_paced_after=1)
    out = _run(method.for_epoch(0), model, x, y)
    assert torch.equal(out.loss, _run(PGDAT(), model, x, y).loss)  # plain CE on s·z(x')
    assert torch.equal(_run(method.for_epoch(1), model, x, y).loss,
                       _run(PGDAT(self_paced_ce=True), model, x, y).loss)


# ------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"method": "spat", "beta_ramp_epochs": -1}, "beta ramp epochs must be >= 0"),
    ({"method": "spat", "self_paced_after": -2}, "self paced after must be >= 0"),
    ({"method": "spat", "epochs": 5, "beta_ramp_epochs": 5}, "must be < epochs"),
    ({"method": "spat", "epochs": 5, "self_paced_after": 7}, "must be < epochs"),
    ({"method": "pgd_at", "beta_ramp_epochs": 2}, "valid: trades, mart, spat"),
    ({"method": "standard", "beta_ramp_epochs": 2}, "no beta|beta/lambda"),
    ({"method": "trades", "self_paced_after": 2}, "needs the self-paced cross-entropy"),
    ({"method": "spat", "self_paced_ce": False, "self_paced_after": 2},
     "needs the self-paced cross-entropy"),
])
def test_invalid_warmups_are_one_line_errors(kwargs: dict, words: str) -> None:
    with pytest.raises(SpatError, match=words) as e:
        TrainConfig(**kwargs).resolved()
    assert "\n" not in str(e.value)


def test_invalid_warmups_in_the_method_classes() -> None:
    with pytest.raises(SpatError, match="integer >= 0"):
        SPAT(beta_ramp_epochs=-1)
    with pytest.raises(SpatError, match="needs the self-paced cross-entropy"):
        ConsistencyAT(self_paced_after=3)
    with pytest.raises(SpatError, match="no beta/lambda weight"):
        build_method("pgd_at", beta_ramp_epochs=3)
    # a resolved config carries every knob: 0 on a method without the part is ignored
    assert isinstance(build_method("pgd_at", beta_ramp_epochs=0, self_paced_after=0), PGDAT)


def test_config_round_trip_toml_and_old_runs(tmp_path: Path) -> None:
    r = TrainConfig(method="spat", beta_ramp_epochs=5, self_paced_after=3).resolved()
    assert (r.beta_ramp_epochs, r.self_paced_after) == (5, 3)
    back = config_from_dict(json.loads(json.dumps(r.to_dict())), source="config.json")
    assert back == r and back.resolved() == r
    toml = tmp_path / "w.toml"
    toml.write_text('method = "spat"\n[train]\nbeta_ramp_epochs = 5\nself_paced_after = 3\n')
    assert config_from_dict(load_config_file(toml)).resolved() == r
    toml.write_text('method = "spat"\nbeta_ramp_epochs = 2.5\n')
    with pytest.raises(SpatError, match="beta_ramp_epochs"):
        config_from_dict(load_config_file(toml), source=str(toml))
    # a run recorded before the warm-ups existed: no keys, resolves to 0 (off), and a study
    # does not take its cell for one made with other settings
    old = TrainConfig(method="spat").resolved().to_dict()
    del old["beta_ramp_epochs"], old["self_paced_after"]
    cfg = config_from_dict(old, source="old config.json").resolved()
    assert (cfg.beta_ramp_epochs, cfg.self_paced_after) == (0, 0)
    assert config_mismatch(old, cfg.to_dict()) == []
    assert config_mismatch(old, r.to_dict()) == ["beta_ramp_epochs", "self_paced_after"]


# ------------------------------------------------------------------------- the loop


_SMALL = {"dataset": "digits", "method": "spat", "train_subset": 96, "val_size": 0.05,
          "batch_size": 32, "steps": 1, "val_steps": 1, "test_steps": 1, "test_subset": 32,
          "lr": 0.02, "deterministic": True, "device": "cpu"}


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    was = torch.are_deterministic_algorithms_enabled()
    yield
    torch.set_num_threads(n)
    torch.use_deterministic_algorithms(was)


def test_loop_hands_each_epoch_its_warmup(tmp_path: Path, monkeypatch, one_thread) -> None:
    import spat.train.loop as loop
    from spat.train.training import train

    seen: list[tuple[int, float, bool]] = []
    real = loop.method_for_epoch

    def spy(method, epoch):
        m = real(method, epoch)
        seen.append((epoch, m.beta, m.self_paced_ce))
        return m

    monkeypatch.setattr(loop, "method_for_epoch", spy)
    cfg = TrainConfig(**_SMALL, epochs=4, beta_ramp_epochs=2, self_paced_after=3,
                      out_dir=str(tmp_path), name="w")
    train(cfg, progress=False)
    assert seen == [(0, 0.0, False), (1, 3.0, False), (2, 6.0, False), (3, 6.0, True)]
    metrics = (tmp_path / "w" / "metrics.jsonl").read_text()
    recs = [json.loads(line) for line in metrics.splitlines()]
    # epoch 1 has β = 0: the loss is the CE alone; epoch 2 has β = 3
    assert recs[0]["train_loss"] == pytest.approx(recs[0]["train_loss_nat"], rel=1e-6)
    assert recs[1]["train_loss"] == pytest.approx(
        recs[1]["train_loss_nat"] + 3.0 * recs[1]["train_loss_rob"], rel=1e-5)
    saved = json.loads((tmp_path / "w" / "config.json").read_text())
    assert (saved["beta_ramp_epochs"], saved["self_paced_after"]) == (2, 3)


def test_interrupted_warmup_run_resumes_exactly(tmp_path: Path, monkeypatch,
                                                one_thread) -> None:
    """Stopped after epoch 1 (inside both warm-ups) and resumed: the same weights, bitwise, as
    the uninterrupted run."""
    from safetensors.torch import load_file

    from spat import checkpoint as ckpt
    from spat.train.loop import TIMING_FIELDS, Trainer
    from spat.train.training import train

    cfg = dict(_SMALL, epochs=4, beta_ramp_epochs=3, self_paced_after=2,
               out_dir=str(tmp_path))
    train(TrainConfig(**cfg, name="ref"), progress=False)

    real = Trainer.train_epoch

    def stop_at_epoch_2(self, epoch, on_step):
        if epoch == 1:
            raise RuntimeError("stopped")
        return real(self, epoch, on_step)

    monkeypatch.setattr(Trainer, "train_epoch", stop_at_epoch_2)
    with pytest.raises(RuntimeError, match="stopped"):
        train(TrainConfig(**cfg, name="cut"), progress=False)
    monkeypatch.setattr(Trainer, "train_epoch", real)
    assert ckpt.read_pointer(tmp_path / "cut" / "checkpoints", "last") == "epoch_0001"
    train(TrainConfig(**cfg), resume=tmp_path / "cut", progress=False)

    def weights(name: str) -> dict[str, torch.Tensor]:
        return load_file(str(tmp_path / name / "checkpoints" / "epoch_0004" / ckpt.WEIGHTS))

    a, b = weights("ref"), weights("cut")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def records(name: str) -> list[dict]:
        out = []
        for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines():
            rec = json.loads(line)
            for k in TIMING_FIELDS:
                rec.pop(k)
            out.append(rec)
        return out

    assert records("cut") == records("ref")
