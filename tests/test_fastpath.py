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
from spat.build import load_data, method_for, model_for
from spat.cli import main
from spat.config import TrainConfig, config_from_dict
from spat.errors import SpatError
from spat.methods import spat, trades
from spat.methods.base import ThreatModel
from spat.methods.spat import hcp_ecp_objective
from spat.models import build_model
from spat.train.loop import Trainer
from spat.train.validate import evaluate_split
from spat.utils import calibration, hardware
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
    # the switches are strings (auto/on/off); a boolean is refused in one line, naming the key
    with pytest.raises(SpatError, match="field 'amp' must be a string"):
        config_from_dict({"amp": True})
    assert config_from_dict({"amp": "on", "compile": "off"}).resolved().compile == "off"
    with pytest.raises(SpatError, match="invalid amp 'fp16'"):
        TrainConfig(amp="fp16").resolved()


def test_cli_switches_and_bad_value(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["train", "--amp", "fast", "--out-dir", str(tmp_path)])
    assert e.value.code == 2
    assert "invalid value 'fast' (valid: auto, on, off)" in capsys.readouterr().err


def test_run_records_the_decision_the_measurement_and_the_machine(tmp_path: Path,
                                                                    monkeypatch) -> None:
    _no_bf16(monkeypatch)
    monkeypatch.setenv("SPAT_CACHE_DIR", str(tmp_path / "cache"))
    args = ["train", "--method", "spat", "--train-subset", "32", "--val-size", "8",
            "--epochs", "1", "--steps", "1", "--val-steps", "1", "--test-steps", "1",
            "--test-subset", "8", "--batch-size", "16", "--no-progress",
            "--out-dir", str(tmp_path), "--name", "r", "--compile", "off"]
    assert main(args) == 0
    run = tmp_path / "r"
    cfg = json.loads((run / "config.json").read_text())
    assert (cfg["amp"], cfg["channels_last"], cfg["compile"]) == ("auto", "auto", "off")
    env = json.loads((run / "env.json").read_text())
    fast = env["fast_path"]
    # without native bf16 the candidates are fp32 in NCHW and NHWC; the faster one is taken
    cal = fast["calibration"]
    assert cal["source"] == "measured" and set(cal["times_s"]) == {"fp32", "channels_last"}
    assert cal["chosen"] == min(cal["times_s"], key=cal["times_s"].get)
    assert fast["amp"] == "off" and fast["channels_last"] is (cal["chosen"] == "channels_last")
    assert fast["compile"] is False and fast["reasons"]["compile"] == "--compile off"
    assert fast["reasons"]["amp"].startswith(f"auto: {cal['chosen']} was the fastest step")
    # the cost: a probe, a warm-up for the other candidate, two rounds; nothing more
    assert cal["steps_run"] == 2 + 1 + 2 * 2 and cal["k"] == 1
    assert cal["key"]["model"] == "small_cnn" and cal["key"]["batch"] == 16
    assert (tmp_path / "cache" / "fast_path.json").is_file()
    machine = env["machine"]
    assert machine["cpu_model"] == hardware.cpu_model() and machine["cpu_cores_logical"] >= 1
    assert machine["torch_threads"] == torch.get_num_threads() and "gpu" not in machine
    if machine["cpu_flags"] is not None:
        assert set(machine["cpu_flags"]) == set(hardware.RECORDED_FLAGS)
    assert env["device_name"] == machine["cpu_model"]


# ------------------------------------------------------------------ auto by measurement


def test_candidates_of_each_device_and_switch() -> None:
    auto = {"amp": "auto", "channels_last": "auto", "compile": "auto"}
    names = lambda req, dev, bf16: [s.name for s in calibration.candidates(  # noqa: E731
        req, dev, native_bf16=bf16)]
    assert names(auto, "cpu", True) == ["bf16+channels_last", "bf16", "channels_last", "fp32"]
    assert names(auto, "cpu", False) == ["channels_last", "fp32"]  # emulated bf16 not tried
    assert names(auto, "cuda", False) == ["bf16+channels_last", "bf16", "channels_last", "fp32"]
    assert names(auto, "mps", True) == ["fp32"]
    assert names({**auto, "amp": "on"}, "cpu", False) == ["bf16+channels_last", "bf16"]
    assert names({"amp": "off", "channels_last": "on", "compile": "on"}, "cpu", True) == [
        "channels_last+compile"]


def test_choose_takes_the_fastest_and_charges_compilation() -> None:
    times = {"bf16+channels_last": 0.80, "bf16": 0.83, "channels_last": 0.57, "fp32": 0.68}
    assert calibration.choose(times) == "channels_last"
    assert calibration.choose({"fp32": 1.0, "bf16": 1.0}) == "fp32"  # a tie: the first
    with_compile = {"channels_last": 0.5, "channels_last+compile": 0.4}
    first = {"channels_last": 0.6, "channels_last+compile": 60.4}  # 60 s of compilation
    assert calibration.choose(with_compile, run_steps=100, first=first) == "channels_last"
    assert calibration.choose(with_compile, run_steps=10_000, first=first) == \
        "channels_last+compile"
    with pytest.raises(ValueError):
        calibration.choose({})


class _FakeClock:
    """A clock that only the fake steps advance: ``cost[name] * (k + 1) / (K + 1)`` each."""

    def __init__(self, cost: dict[str, float], k_full: int) -> None:
        self.now, self.cost, self.k_full, self.calls = 0.0, cost, k_full, []

    def __call__(self) -> float:
        return self.now

    def make_step(self, setting, k):
        def step() -> None:
            self.calls.append((setting.name, k))
            self.now += self.cost[setting.name] * (k + 1) / (self.k_full + 1)
        return step


def test_calibrate_times_every_candidate_within_its_budget() -> None:
    settings = calibration.candidates({"amp": "auto", "channels_last": "auto",
                                       "compile": "off"}, "cpu", native_bf16=True)
    cost = {"bf16+channels_last": 0.080, "bf16": 0.083, "channels_last": 0.057, "fp32": 0.068}
    clock = _FakeClock(cost, 10)
    res = calibration.calibrate(clock.make_step, settings, k=10, run_steps=1000, clock=clock)
    assert res is not None and res.k == 10 and res.repeats == 2
    assert res.times == pytest.approx(cost) and calibration.choose(res.times) == "channels_last"
    assert res.steps_run == len(clock.calls) == 2 + 3 + 2 * 4  # probe, warm-ups, two rounds
    assert res.seconds <= res.budget_s == pytest.approx(3.0)
    # rounds alternate their order, so drifting load hits every candidate alike
    rounds = [n for n, _ in clock.calls[5:]]
    assert rounds[:4] == rounds[4:][::-1]
    # slower steps: one round; slower still: the attack cut to K = 1; too slow: not measured
    for scale, expect in ((4.0, (10, 1)), (10.0, (1, 1)), (200.0, None)):
        clock = _FakeClock({k: v * scale for k, v in cost.items()}, 10)
        res = calibration.calibrate(clock.make_step, settings, k=10, run_steps=10, clock=clock)
        assert (res.k, res.repeats) == expect if expect else res is None
        assert clock.now <= max(3.0, 0.03 * 10 * 0.083 * scale) + 2 * 0.083 * scale
    # a long run buys a longer calibration (3 % of it), at the full K
    clock = _FakeClock({k: v * 10 for k, v in cost.items()}, 10)
    res = calibration.calibrate(clock.make_step, settings, k=10, run_steps=100_000,
                                clock=clock)
    assert res is not None and (res.k, res.repeats) == (10, 2)


def _digits(**kw):
    cfg = TrainConfig(dataset="digits", method="spat", train_subset=32, val_size=0, epochs=1,
                      steps=1, batch_size=16, **kw).resolved()
    data = load_data(cfg)
    return cfg, data, model_for(cfg, data.info), method_for(cfg)


def _measure(cfg, data, model, method, log=lambda _: None):
    from spat.train.calibrate import measure_fast_path

    return measure_fast_path(cfg, data, model, method, CPU, local_batch=16, run_steps=2,
                             log=log)


def test_cache_hit_skips_the_measurement_and_a_corrupted_cache_is_ignored(
        tmp_path: Path, monkeypatch) -> None:
    _has_bf16(monkeypatch)
    monkeypatch.setenv("SPAT_CACHE_DIR", str(tmp_path))
    cfg, data, model, method = _digits()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    first = _measure(cfg, data, model, method)
    assert first.calibration is not None and first.calibration["source"] == "measured"
    assert len(first.calibration["times_s"]) == 4
    # the run's model and random state are untouched (each candidate trains a copy)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert torch.equal(torch.get_rng_state(), rng)

    def no_timing(*a, **k):
        raise AssertionError("measured although the cache holds the answer")

    monkeypatch.setattr(calibration, "calibrate", no_timing)
    again = _measure(cfg, data, model, method)
    assert again.calibration["source"] == "cache"
    assert (again.amp, again.channels_last) == (first.amp, first.channels_last)
    # a subset of the cached candidates (--amp off) is answered from the cache too
    cfg_off, *_ = _digits(amp="off")
    sub = _measure(cfg_off, data, model, method)
    assert sub.calibration["source"] == "cache" and sub.amp is False
    # a corrupted cache: ignored with a note, measured again, rewritten valid
    monkeypatch.undo()
    _has_bf16(monkeypatch)
    monkeypatch.setenv("SPAT_CACHE_DIR", str(tmp_path))
    cache = tmp_path / "fast_path.json"
    for junk in ("{not json", '{"format": 99, "entries": {}}', "[1, 2]"):
        cache.write_text(junk)
        notes: list[str] = []
        fp = _measure(cfg, data, model, method, log=notes.append)
        assert fp.calibration["source"] == "measured"
        assert any("ignoring the fast-path cache" in n for n in notes), notes
        assert json.loads(cache.read_text())["format"] == 1  # rewritten, valid


def test_explicit_switches_and_deterministic_runs_are_not_timed(monkeypatch,
                                                                tmp_path: Path) -> None:
    _has_bf16(monkeypatch)
    monkeypatch.setenv("SPAT_CACHE_DIR", str(tmp_path))

    def no_timing(*a, **k):
        raise AssertionError("timed")

    monkeypatch.setattr(calibration, "calibrate", no_timing)
    cfg, data, model, method = _digits(amp="on", channels_last="off")
    fp = _measure(cfg, data, model, method)
    assert (fp.amp, fp.channels_last, fp.calibration) == (True, False, None)
    cfg, data, model, method = _digits(deterministic=True)
    fp = _measure(cfg, data, model, method)
    assert (fp.amp, fp.channels_last) == (True, True) and fp.calibration is None
    assert "--deterministic: not timed" in fp.reasons["amp"]
    assert not (tmp_path / "fast_path.json").exists()


def test_an_unwritable_cache_is_a_note(tmp_path: Path, monkeypatch) -> None:
    _no_bf16(monkeypatch)
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("SPAT_CACHE_DIR", str(blocker / "sub"))  # a folder under a file
    notes: list[str] = []
    cfg, data, model, method = _digits()
    fp = _measure(cfg, data, model, method, log=notes.append)
    assert fp.calibration["source"] == "measured" and fp.calibration["cache_file"] is None
    assert any("could not write the fast-path cache" in n for n in notes), notes


def test_resume_trains_with_the_recorded_choice(tmp_path: Path, monkeypatch) -> None:
    """A resumed run is not measured again: its env.json's choice holds for the switches still
    auto; an explicit switch on resume wins."""
    from spat.train import calibrate as train_calibrate
    from spat.train import loop

    monkeypatch.setenv("SPAT_CACHE_DIR", str(tmp_path / "cache"))
    args = ["train", "--train-subset", "32", "--val-size", "0", "--epochs", "1", "--steps",
            "1", "--test-steps", "1", "--test-subset", "8", "--batch-size", "16",
            "--no-progress", "--out-dir", str(tmp_path), "--name", "r"]
    assert main(args) == 0
    env_path = tmp_path / "r" / "env.json"
    env = json.loads(env_path.read_text())
    env["fast_path"].update(amp="off", channels_last=False)  # as if fp32 NCHW had won
    env_path.write_text(json.dumps(env))

    def no_timing(*a, **k):
        raise AssertionError("a resumed run was measured again")

    monkeypatch.setattr(train_calibrate, "measure_fast_path", no_timing)
    seen = []
    real_init = loop.Trainer.__init__

    def spy(self, *a, **k):
        real_init(self, *a, **k)
        seen.append(self.fast_path)

    monkeypatch.setattr(loop.Trainer, "__init__", spy)
    assert main(["train", "--resume", str(tmp_path / "r"), "--epochs", "2",
                 "--no-progress"]) == 0
    assert (seen[-1].amp, seen[-1].channels_last) == (False, False)
    assert "as recorded when the run started" in seen[-1].reasons["amp"]
    assert main(["train", "--resume", str(tmp_path / "r"), "--epochs", "3", "--no-progress",
                 "--channels-last", "on"]) == 0
    assert (seen[-1].amp, seen[-1].channels_last) == (False, True)
    # the record's unit: malformed records decide afresh
    assert hardware.recorded_fast_path({"amp": "fp16"}, "auto", "auto", "auto", CPU) is None
    assert hardware.recorded_fast_path(None, "auto", "auto", "auto", CPU) is None


def test_cpu_model_reads_cpuinfo(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8375C\n")
    assert hardware.cpu_model(info) == "Intel(R) Xeon(R) Platinum 8375C"
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nModel\t\t: Raspberry Pi 5\n")
    assert hardware.cpu_model(arm) == "Raspberry Pi 5"
    assert hardware.cpu_model(tmp_path / "missing")  # platform fallback, never empty


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
                      epochs=1, steps=1, val_steps=1, batch_size=32, amp="on",
                      channels_last="on").resolved()
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
    # the loop's auto is measured by its calibration; a setting outside --cpu-settings gets
    # its own row ("ours")
    auto = doc["auto"]["pgd_at"]
    chosen = auto["calibration"]["chosen"]
    assert auto["calibration"]["source"] == "measured" and chosen in auto["calibration"][
        "times_s"]
    assert set(rows) == {"reference", "ours:fp32", "ours:bf16+channels_last"} | (
        set() if chosen in ("fp32", "bf16+channels_last") else {"ours"})
    for impl, r in rows.items():
        if impl != "reference":
            assert len(r["times"]) == 2 and r["ratio"]["median"] > 0
            assert r["setting"] == (chosen if impl == "ours" else impl.split(":", 1)[1])
    assert doc["e2e"] is None  # --quick skips the end-to-end runs


def test_setting_names_round_trip() -> None:
    """Every candidate's name maps back to the same setting (the cache stores names; plain
    fp32 + compile is "compile", which a suffix test for "+compile" would miss)."""
    from spat.utils.calibration import Setting

    for amp in (False, True):
        for cl in (False, True):
            for comp in (False, True):
                s = Setting(amp, cl, comp)
                assert Setting.from_name(s.name) == s
    assert Setting.from_name("compile") == Setting(False, False, True)
    with pytest.raises(ValueError):
        Setting.from_name("bf17")
