"""The CPU/GPU fast path (bf16 autocast, channels_last, compile): chosen only where the hardware
supports it and recorded with its reason; the training adversary under bf16 finds the same
adversarial examples as in fp32 up to bf16 tolerance; losses and the cosine head stay float32;
evaluation never runs under autocast."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from spat.attacks import cross_entropy, perturb
from spat.cli import main
from spat.errors import SpatError
from spat.evaluation.split import evaluate_split
from spat.methods import spat, trades
from spat.methods.base import ThreatModel
from spat.methods.spat import hcp_ecp_objective
from spat.models import build_model
from spat.runs import load_data, method_for, model_for
from spat.train.config import TrainConfig, config_from_dict
from spat.train.loop import Trainer
from spat.utils import hardware
from spat.utils.hardware import normalize_switch, resolve_fast_path

CPU = torch.device("cpu")
BF16 = dict(device_type="cpu", dtype=torch.bfloat16)


def _model(head: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("small_cnn", num_classes=10, in_channels=1, image_size=(28, 28),
                       head=head).eval()


def _batch(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


# ------------------------------------------------------------------ hardware decision


def _no_bf16(monkeypatch) -> None:
    monkeypatch.setattr(hardware, "cpu_bf16_support",
                        lambda: (False, "CPU lacks native bf16 (test)"))


def _has_bf16(monkeypatch) -> None:
    monkeypatch.setattr(hardware, "cpu_bf16_support", lambda: (True, "native bf16 (test)"))


def test_auto_picks_bf16_only_on_a_cpu_with_native_bf16(monkeypatch) -> None:
    _has_bf16(monkeypatch)
    fp = resolve_fast_path("auto", "auto", "auto", CPU)
    assert (fp.amp, fp.channels_last, fp.compile) == (True, True, False)
    assert fp.amp_dtype is torch.bfloat16 and "native bf16 (test)" in fp.reasons["amp"]
    _no_bf16(monkeypatch)
    fp = resolve_fast_path("auto", "auto", "auto", CPU)
    assert fp.amp is False and fp.amp_dtype is None
    assert fp.reasons["amp"] == "auto: CPU lacks native bf16 (test)"
    assert fp.to_dict()["amp"] == "off" and fp.to_dict()["requested"]["amp"] == "auto"
    # explicit settings win over the probe, and the reason says so
    fp = resolve_fast_path("on", "off", "on", CPU)
    assert (fp.amp, fp.channels_last, fp.compile) == (True, False, True)
    assert "--amp on" in fp.reasons["amp"] and "lacks native bf16" in fp.reasons["amp"]
    # other devices: CUDA always bf16, MPS fp32 and NCHW
    assert resolve_fast_path("auto", "auto", "auto", torch.device("cuda")).amp is True
    mps = resolve_fast_path("auto", "auto", "auto", torch.device("mps"))
    assert (mps.amp, mps.channels_last) == (False, False)


@pytest.fixture
def fresh_probe():
    """The probe's cached answer is cleared before and after (it is computed once per process)."""
    hardware.cpu_bf16_support.cache_clear()
    yield
    hardware.cpu_bf16_support.cache_clear()


def test_cpu_probe_reads_cpuinfo_flags(monkeypatch, tmp_path: Path, fresh_probe) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16 amx_tile\n")
    assert hardware._cpuinfo_flags(info) == {"fpu", "sse2", "avx512f", "avx512_bf16",
                                            "amx_tile"}
    monkeypatch.setattr(hardware.platform, "machine", lambda: "x86_64")
    for flags, expected in (({"avx512f", "avx512_bf16"}, True), ({"amx_bf16"}, True),
                            ({"avx512f", "avx2"}, False)):
        monkeypatch.setattr(hardware, "_cpuinfo_flags", lambda f=flags: f)
        hardware.cpu_bf16_support.cache_clear()
        ok, why = hardware.cpu_bf16_support()
        assert ok is expected and ("avx512_bf16" in why or "amx_bf16" in why)
    monkeypatch.setattr(hardware.platform, "machine", lambda: "aarch64")
    hardware.cpu_bf16_support.cache_clear()
    assert hardware.cpu_bf16_support() == (
        False, "aarch64 CPU: native bf16 not established, using fp32")


def test_switch_values_and_old_configs() -> None:
    assert [normalize_switch(v, "amp") for v in (None, True, False, "auto", "ON", " off ")] == \
        ["auto", "on", "off", "auto", "on", "off"]
    # a config.json written before the switches were strings (amp null/true, compile false)
    cfg = config_from_dict({"amp": None, "compile": False}).resolved()
    assert (cfg.amp, cfg.channels_last, cfg.compile) == ("auto", "auto", "off")
    assert config_from_dict({"amp": True}).resolved().amp == "on"
    with pytest.raises(SpatError, match="invalid amp 'fp16'"):
        TrainConfig(amp="fp16").resolved()


def test_cli_switches_and_bad_value(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["train", "--amp", "fast", "--out-dir", str(tmp_path)])
    assert e.value.code == 2
    assert "invalid value 'fast' (valid: auto, on, off)" in capsys.readouterr().err


def test_run_records_the_decision_and_its_reason(tmp_path: Path, monkeypatch) -> None:
    _no_bf16(monkeypatch)
    args = ["train", "--method", "spat", "--train-subset", "32", "--val-size", "8",
            "--epochs", "1", "--steps", "1", "--val-steps", "1", "--test-steps", "1",
            "--test-subset", "8", "--batch-size", "16", "--no-progress",
            "--out-dir", str(tmp_path), "--name", "r", "--compile", "off"]
    assert main(args) == 0
    run = tmp_path / "r"
    cfg = json.loads((run / "config.json").read_text())
    assert (cfg["amp"], cfg["channels_last"], cfg["compile"]) == ("auto", "auto", "off")
    fast = json.loads((run / "env.json").read_text())["fast_path"]
    assert fast["amp"] == "off" and fast["channels_last"] is True and fast["compile"] is False
    assert fast["reasons"]["amp"] == "auto: CPU lacks native bf16 (test)"
    assert fast["reasons"]["compile"] == "--compile off"


# ------------------------------------------------------------------ numerics under bf16


def test_losses_and_cosine_head_are_float32_under_autocast() -> None:
    x, y = _batch(16)
    cos, lin = _model("cosine"), _model("linear")
    with torch.autocast(**BF16):
        assert cos(x).dtype == torch.float32  # the cosine head computes in fp32
        assert lin(x).dtype == torch.bfloat16  # a plain linear head autocasts...
        assert cross_entropy(lin(x), y).dtype == torch.float32  # ...its losses do not
        threat = ThreatModel(eps=0.1, step_size=0.05, steps=2, init="normal")
        for method, model in ((spat(threat=threat), cos), (trades(threat=threat), lin)):
            model.train()
            out = method(model, x, y, generator=torch.Generator().manual_seed(0))
            assert out.loss.dtype == torch.float32
            assert all(v.dtype == torch.float32 for v in out.parts.values()), out.parts
            model.eval()


def test_bf16_adversary_matches_fp32_on_a_fixed_model() -> None:
    """CE PGD: the first signed-gradient step agrees on most coordinates, and the attack
    reaches the same loss within 1 %; the x' of both lie in the ball and the box, fp32."""
    model = _model("linear")
    x, y = _batch()
    grads = []
    for amp in (False, True):
        xx = x.clone().requires_grad_(True)
        with torch.autocast(**BF16, enabled=amp):
            loss = cross_entropy(model(xx), y).sum()
        grads.append(torch.autograd.grad(loss, xx)[0])
    agree = (grads[0].sign() == grads[1].sign()).float().mean().item()
    assert agree >= 0.85, agree
    adv = []
    for amp in (False, True):
        with torch.autocast(**BF16, enabled=amp):
            adv.append(perturb(model, x, y, cross_entropy, eps=0.1, step_size=0.025, steps=5,
                               generator=torch.Generator().manual_seed(1)))
    for a in adv:
        assert a.dtype == torch.float32
        assert (a - x).abs().max() <= 0.1 + 1e-6 and a.min() >= 0 and a.max() <= 1
    with torch.no_grad():
        l32, l16 = (cross_entropy(model(a), y).mean().item() for a in adv)
        clean = cross_entropy(model(x), y).mean().item()
    assert l16 > clean and l32 > clean
    assert abs(l16 - l32) <= 0.01 * l32, (l16, l32)


def test_bf16_spat_adversary_is_as_strong_as_fp32() -> None:
    """SPAT's HCP-ECP objective: near the clean point its gradient is rounding-sized, so the
    paths differ; what matters is that the bf16 adversary reaches the same objective (within
    5 %, evaluated in fp32 against the fp32 clean logits)."""
    model = _model("cosine")
    x, y = _batch()
    with torch.no_grad():
        clean32 = model(x)
    reached = []
    for amp in (False, True):
        with torch.autocast(**BF16, enabled=amp):
            with torch.no_grad():
                clean = model(x)
            adv = perturb(model, x, y, hcp_ecp_objective(clean, 0.2), eps=0.1, step_size=0.025,
                          steps=5, init="normal", generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            reached.append(hcp_ecp_objective(clean32, 0.2)(model(adv), y).mean().item())
    assert reached[0] > 0 and abs(reached[1] - reached[0]) <= 0.05 * reached[0], reached


# ------------------------------------------------------------------ the loop


def test_trainer_applies_the_fast_path_and_evaluates_in_fp32(monkeypatch) -> None:
    _has_bf16(monkeypatch)
    cfg = TrainConfig(dataset="digits", method="trades", train_subset=64, val_size=16,
                      epochs=1, steps=1, val_steps=1, batch_size=32).resolved()
    data = load_data(cfg)
    model = model_for(cfg, data.info)
    trainer = Trainer(cfg, data, model, method_for(cfg), CPU, run_dir=None, progress=False,
                      log=lambda _: None)
    assert trainer.fast_path.amp and trainer.fast_path.channels_last
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    seen: list[tuple[str, bool]] = []
    phase = ["train"]
    model.register_forward_hook(
        lambda m, i, o: seen.append((phase[0], torch.is_autocast_enabled("cpu"))))
    monkeypatch.setattr(trainer, "validate", lambda epoch: (phase.__setitem__(0, "val"),
                                                            Trainer.validate(trainer, epoch))[1])
    trainer.fit()
    assert {a for p, a in seen if p == "train"} == {True}  # adversary and outer step in bf16
    assert {a for p, a in seen if p == "val"} == {False}  # validation attack in fp32
    phase[0] = "test"
    evaluate_split(model, data.test, cfg, CPU, steps=1, seed=0)
    assert {a for p, a in seen if p == "test"} == {False}


def test_fast_path_off_is_plain_fp32_nchw(monkeypatch) -> None:
    _has_bf16(monkeypatch)
    cfg = TrainConfig(dataset="digits", train_subset=32, val_size=0, epochs=1, steps=1,
                      batch_size=16, amp="off", channels_last="off").resolved()
    data = load_data(cfg)
    model = model_for(cfg, data.info)
    trainer = Trainer(cfg, data, model, method_for(cfg), CPU, run_dir=None, progress=False,
                      log=lambda _: None)
    assert not trainer.fast_path.amp and not trainer.fast_path.channels_last
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous()


# ------------------------------------------------------------------ the benchmark


def test_benchmark_times_every_cpu_setting_against_the_reference(tmp_path: Path) -> None:
    """A tiny run of ``benchmarks/bench.py``: one row per CPU setting, each with its paired
    ratio to the reference, the loop's default marked, and the report's targets table."""
    import importlib.util

    from tests.conftest import REPO

    spec = importlib.util.spec_from_file_location("_bench_fastpath", REPO / "benchmarks" /
                                                  "bench.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "b.json"
    assert bench.main(["--quick", "--batch", "8", "--check-batch", "8", "--steps", "1",
                       "--methods", "pgd_at", "--repeats", "2", "--no-eval", "--no-flops",
                       "--cpu-settings", "fp32,bf16+channels_last", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    rows = {r["impl"]: r for r in doc["train"]}
    assert set(rows) == {"reference", "ours:fp32", "ours:bf16+channels_last"}
    for impl in ("ours:fp32", "ours:bf16+channels_last"):
        r = rows[impl]
        assert len(r["times"]) == 2 and r["ratio"]["median"] > 0
        assert r["setting"] == impl.split(":", 1)[1]
    assert doc["e2e"] is None  # --quick skips the end-to-end runs
