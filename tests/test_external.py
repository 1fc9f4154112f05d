"""Models that are not spat runs: the official SPAT/TRADES checkpoint layouts (WideResNet and
ResNet-18 state dicts generated here with the official key names and shapes, checked against a
reference forward written from the official architectures' definitions), a user's own module
through ``spat eval --model``, plain tensors through the library's ``evaluate``, and refusals
(code in a torch file, non-finite weights)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

import spat
from spat.cli import main
from spat.data import load_dataset
from spat.errors import SpatError
from spat.evaluation import EvalOptions, evaluate, select_subset
from spat.models.external import convert_official, official_layout, read_weights


# ------------------------------------------------------------------ official layouts, generated
def _bn(sd: dict[str, torch.Tensor], prefix: str, c: int, g: torch.Generator,
        counters: bool) -> None:
    sd[f"{prefix}.weight"] = 0.5 + torch.rand(c, generator=g)
    sd[f"{prefix}.bias"] = 0.1 * torch.randn(c, generator=g)
    sd[f"{prefix}.running_mean"] = 0.1 * torch.randn(c, generator=g)
    sd[f"{prefix}.running_var"] = 0.5 + torch.rand(c, generator=g)
    if counters:
        sd[f"{prefix}.num_batches_tracked"] = torch.tensor(7)


def _conv(cout: int, cin: int, k: int, g: torch.Generator) -> torch.Tensor:
    return torch.randn(cout, cin, k, k, generator=g) * math.sqrt(2.0 / (k * k * cout))


def official_wrn_state(depth: int, k: int, classes: int = 10, counters: bool = True,
                       seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict with the keys and shapes of the official TRADES/SPAT ``WideResNet``
    (``sub_block1`` included: it is built but never used)."""
    g = torch.Generator().manual_seed(seed)
    n = (depth - 4) // 6
    ch = [16, 16 * k, 32 * k, 64 * k]
    sd: dict[str, torch.Tensor] = {"conv1.weight": _conv(16, 3, 3, g)}
    for name, cin, cout in (("block1", ch[0], ch[1]), ("sub_block1", ch[0], ch[1]),
                            ("block2", ch[1], ch[2]), ("block3", ch[2], ch[3])):
        for j in range(n):
            p, i = f"{name}.layer.{j}", cin if j == 0 else cout
            _bn(sd, f"{p}.bn1", i, g, counters)
            sd[f"{p}.conv1.weight"] = _conv(cout, i, 3, g)
            _bn(sd, f"{p}.bn2", cout, g, counters)
            sd[f"{p}.conv2.weight"] = _conv(cout, cout, 3, g)
            if i != cout:
                sd[f"{p}.convShortcut.weight"] = _conv(cout, i, 1, g)
    _bn(sd, "bn1", ch[3], g, counters)
    sd["fc.weight"] = torch.randn(classes, ch[3], generator=g) / math.sqrt(ch[3])
    sd["fc.bias"] = 0.1 * torch.randn(classes, generator=g)
    return sd


def official_resnet18_state(classes: int = 10, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict with the keys and shapes of the official TRADES/SPAT ``ResNet18``."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {"conv1.weight": _conv(64, 3, 3, g)}
    _bn(sd, "bn1", 64, g, True)
    cin = 64
    for s, (planes, stride) in enumerate(((64, 1), (128, 2), (256, 2), (512, 2)), start=1):
        for b, st in enumerate((stride, 1)):
            p = f"layer{s}.{b}"
            sd[f"{p}.conv1.weight"] = _conv(planes, cin, 3, g)
            _bn(sd, f"{p}.bn1", planes, g, True)
            sd[f"{p}.conv2.weight"] = _conv(planes, planes, 3, g)
            _bn(sd, f"{p}.bn2", planes, g, True)
            if st != 1 or cin != planes:
                sd[f"{p}.shortcut.0.weight"] = _conv(planes, cin, 1, g)
                _bn(sd, f"{p}.shortcut.1", planes, g, True)
            cin = planes
    sd["linear.weight"] = torch.randn(classes, 512, generator=g) / math.sqrt(512)
    sd["linear.bias"] = 0.1 * torch.randn(classes, generator=g)
    return sd


def _ref_bn(x: torch.Tensor, sd: dict[str, torch.Tensor], p: str) -> torch.Tensor:
    return F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"],
                        sd[f"{p}.bias"], training=False, eps=1e-5)


def _ref_head(feat: torch.Tensor, w: torch.Tensor, b: torch.Tensor, cosine: bool
              ) -> torch.Tensor:
    """The official head: plain fc, or (SPAT, normalize=True) unit features and unit fc rows
    with the bias kept, at temperature 1."""
    if cosine:
        feat, w = F.normalize(feat, p=2, dim=1), F.normalize(w, p=2, dim=1)
    return F.linear(feat, w, b)


def reference_wrn(sd: dict[str, torch.Tensor], x: torch.Tensor, depth: int, k: int,
                  cosine: bool = False) -> torch.Tensor:
    """The official WideResNet forward (eval mode), written from its definition."""
    n = (depth - 4) // 6
    ch = [16, 16 * k, 32 * k, 64 * k]
    out = F.conv2d(x, sd["conv1.weight"], padding=1)
    for gi, (cin, cout, stride) in enumerate(((ch[0], ch[1], 1), (ch[1], ch[2], 2),
                                              (ch[2], ch[3], 2)), start=1):
        for j in range(n):
            p = f"block{gi}.layer.{j}"
            i, st = (cin, stride) if j == 0 else (cout, 1)
            if i == cout:  # equalInOut: identity shortcut on the raw input
                o = F.relu(_ref_bn(out, sd, f"{p}.bn1"))
                o = F.relu(_ref_bn(F.conv2d(o, sd[f"{p}.conv1.weight"], stride=st, padding=1),
                                   sd, f"{p}.bn2"))
                out = out + F.conv2d(o, sd[f"{p}.conv2.weight"], padding=1)
            else:  # the pre-activated input feeds both branches
                a = F.relu(_ref_bn(out, sd, f"{p}.bn1"))
                o = F.relu(_ref_bn(F.conv2d(a, sd[f"{p}.conv1.weight"], stride=st, padding=1),
                                   sd, f"{p}.bn2"))
                o = F.conv2d(o, sd[f"{p}.conv2.weight"], padding=1)
                out = F.conv2d(a, sd[f"{p}.convShortcut.weight"], stride=st) + o
    out = F.relu(_ref_bn(out, sd, "bn1"))
    feat = F.avg_pool2d(out, 8).view(-1, ch[3])
    return _ref_head(feat, sd["fc.weight"], sd["fc.bias"], cosine)


def reference_resnet18(sd: dict[str, torch.Tensor], x: torch.Tensor, cosine: bool = False
                       ) -> torch.Tensor:
    """The official ResNet18 forward (eval mode), written from its definition."""
    out = F.relu(_ref_bn(F.conv2d(x, sd["conv1.weight"], padding=1), sd, "bn1"))
    for s, stride in enumerate((1, 2, 2, 2), start=1):
        for b, st in enumerate((stride, 1)):
            p = f"layer{s}.{b}"
            o = F.relu(_ref_bn(F.conv2d(out, sd[f"{p}.conv1.weight"], stride=st, padding=1),
                               sd, f"{p}.bn1"))
            o = _ref_bn(F.conv2d(o, sd[f"{p}.conv2.weight"], padding=1), sd, f"{p}.bn2")
            short = out
            if f"{p}.shortcut.0.weight" in sd:
                short = _ref_bn(F.conv2d(out, sd[f"{p}.shortcut.0.weight"], stride=st), sd,
                                f"{p}.shortcut.1")
            out = F.relu(o + short)
    feat = F.avg_pool2d(out, 4).view(out.shape[0], -1)
    return _ref_head(feat, sd["linear.weight"], sd["linear.bias"], cosine)


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(torch.allclose(a, b, rtol=1e-4, atol=1e-5 * (1 + float(b.abs().max()))))


X = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("depth,k", [(10, 1), (16, 2)])
@pytest.mark.parametrize("layout", ["official-trades", "official-spat"])
def test_official_wrn_checkpoint_equals_reference_forward(tmp_path: Path, depth: int, k: int,
                                                          layout: str):
    sd = official_wrn_state(depth, k, counters=depth == 16)  # WRN-10-1: no counters (old torch)
    path = tmp_path / "model-wideres-epoch76.pt"
    torch.save(sd, path)  # as the official training scripts: torch.save(model.state_dict())
    model = spat.load_model(layout, path)  # official-spat: s = 8 by default
    assert not model.training
    cosine = layout == "official-spat"
    ref = reference_wrn(sd, X, depth, k, cosine=cosine)
    with torch.no_grad():
        got = model(X)
    # official-spat attacks s·z, the training temperature; the official forward gives z
    assert _close(got, (8.0 if cosine else 1.0) * ref)
    assert torch.equal(got.argmax(1), ref.argmax(1))
    # the official models take [0, 1] inputs with no normalisation
    assert torch.equal(model.normalize.mean, torch.zeros(1, 3, 1, 1))
    assert torch.equal(model.normalize.std, torch.ones(1, 3, 1, 1))


def test_official_wrn_keys_map_onto_spat_names():
    sd = official_wrn_state(16, 2)
    assert official_layout(sd) == "wrn"
    model, mapped, arch = convert_official(sd)
    assert arch == "wrn16_2"
    assert set(mapped) == set(model.state_dict())
    assert torch.equal(mapped["backbone.block2.0.conv_shortcut.weight"],
                       sd["block2.layer.0.convShortcut.weight"])
    assert torch.equal(mapped["head.weight"], sd["fc.weight"])
    assert not any(k.startswith("sub_block1") for k in mapped)


@pytest.mark.parametrize("layout", ["official-trades", "official-spat"])
def test_official_resnet18_checkpoint_equals_reference_forward(tmp_path: Path, layout: str):
    sd = official_resnet18_state(classes=10)
    path = tmp_path / "resnet18.safetensors"
    save_file({f"module.{k}": v for k, v in sd.items()}, str(path))  # DataParallel prefix
    cosine = layout == "official-spat"
    model = spat.load_model(layout, path, cosine_scale=4.0 if cosine else None)
    ref = reference_resnet18(sd, X[:2], cosine=cosine)
    with torch.no_grad():
        got = model(X[:2])
    assert _close(got, (4.0 if cosine else 1.0) * ref)


def test_official_layout_errors_are_one_line(tmp_path: Path):
    path = tmp_path / "user.pt"
    torch.save({"fc1.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(SpatError, match="not in an official"):
        spat.load_model("official-trades", path)
    with pytest.raises(SpatError, match="needs --weights"):
        spat.load_model("official-spat")


# ------------------------------------------------------------------- a user's own module
USER_MODULE = '''
import torch
from torch import nn


class DigitNet(nn.Module):
    """Maps [0,1] 8x8 digits to 10 logits."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def build():
    return DigitNet()


INSTANCE = DigitNet()
COLOUR = nn.Conv2d(3, 10, 1)  # a model for 3-channel images
'''


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "h13a_usernet.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_eval_any_module_from_the_command_line(user_module: Path,
                                               capsys: pytest.CaptureFixture[str]):
    import h13a_usernet  # the user's file, importable as the CLI will import it

    torch.manual_seed(3)
    net = h13a_usernet.build().eval()
    weights = user_module / "digitnet.pt"
    torch.save(net.state_dict(), weights)
    out = user_module / "out"
    code = main(["eval", "--model", "h13a_usernet:build", "--weights", str(weights),
                 "--dataset", "digits", "--attacks", "fgsm", "--n-examples", "40",
                 "--sanity-examples", "0", "--eps", "0.1", "--out", str(out), "--no-progress"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["model"] == "h13a_usernet:build" and report["weights"] == str(weights)
    assert report["dataset"] == "digits" and report["architecture"] == "DigitNet"
    assert report["n_examples"] == 40 and report["eps"] == pytest.approx(0.1)
    # clean accuracy recomputed by hand on the same 40 test digits
    test = load_dataset("digits").test
    idx = select_subset(len(test), 40, 0)
    x = test.images[idx].float() / 255
    with torch.no_grad():
        correct = int((net(x).argmax(1) == test.labels[idx]).sum())
    assert report["clean"]["correct"] == correct
    assert report["clean_acc"] == pytest.approx(correct / 40)
    # FGSM with ε = 0.1 can only lower the accuracy of every example it attacks
    assert report["attacks"][0]["correct"] <= correct
    assert "wrote" in capsys.readouterr().out


def test_eval_module_instance_and_safetensors_weights(user_module: Path):
    import h13a_usernet

    torch.manual_seed(4)
    w = {k: v.clone() for k, v in h13a_usernet.DigitNet().state_dict().items()}
    save_file(w, str(user_module / "w.safetensors"))
    model = spat.load_model("h13a_usernet:INSTANCE", user_module / "w.safetensors")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in w.items())
    model_from_class = spat.load_model("h13a_usernet:DigitNet", user_module / "w.safetensors")
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x), model_from_class(x))


def test_eval_model_errors_are_one_line_exit_2(user_module: Path,
                                               capsys: pytest.CaptureFixture[str]):
    a_file = user_module / "taken"
    a_file.write_text("x")
    cases = [
        (["--model", "h13a_usernet:build"], "needs --dataset"),
        (["--model", "h13a_usernet:nothing", "--dataset", "digits"], "no attribute"),
        (["--model", "not a spec", "--dataset", "digits"], "package.module:attr"),
        (["--model", "h13a_usernet:build", "--dataset", "digits", "--out", str(a_file)],
         "not a folder"),
        ([], "give a run directory, or --model"),
        (["--model", "h13a_usernet:COLOUR", "--dataset", "digits", "--out",
          str(user_module / "o")], "fails on digits images of shape (1, 8, 8)"),
    ]
    for args, message in cases:
        assert main(["eval", *args, "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("spat: error:") and message in err and err.count("\n") == 1


class _Payload:
    """A class whose pickle needs code to be loaded."""


def test_weights_loader_refuses_code_and_non_finite_values(tmp_path: Path):
    evil = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(1), "obj": _Payload()}, evil)
    with pytest.raises(SpatError, match="refusing to load"):
        read_weights(evil)
    bad = tmp_path / "nan.safetensors"
    save_file({"w": torch.tensor([1.0, float("nan")])}, str(bad))
    with pytest.raises(SpatError, match="non-finite"):
        read_weights(bad)
    bad_pt = tmp_path / "inf.pt"
    torch.save({"state_dict": {"w": torch.tensor([float("inf")])}}, bad_pt)
    with pytest.raises(SpatError, match="non-finite"):
        read_weights(bad_pt)


def test_refusal_of_a_pickled_model_has_no_terminal_escapes(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    """torch's message refusing a pickle is bold (ANSI escapes); spat's error line is plain
    text, with colour forced on as in a terminal, for ``spat eval`` and ``spat export``."""
    monkeypatch.setenv("FORCE_COLOR", "1")
    evil = tmp_path / "evil.pt"
    torch.save(nn.Linear(64, 10), evil)  # a pickled module, not a state dict
    with pytest.raises(SpatError) as caught:
        read_weights(evil)
    assert "refusing to load" in str(caught.value)
    argv = ["eval", "--model", "official-trades", "--weights", str(evil), "--dataset", "digits",
            "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"spat: error: refusing to load {evil}") and err.count("\n") == 1
    assert "\x1b" not in err
    # a run whose state.pt is that pickle: export refuses it, in plain text too
    run = tmp_path / "run" / "checkpoints" / "epoch_0001"
    run.mkdir(parents=True)
    save_file({"w": torch.zeros(1)}, str(run / "model.safetensors"))
    torch.save({"config": {}, "obj": nn.Linear(2, 2)}, run / "state.pt")
    assert main(["export", str(run), "--format", "portable", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("spat: error:") and err.count("\n") == 1 and "\x1b" not in err
    assert not (tmp_path / "x").exists()


def test_one_line_removes_terminal_escapes():
    from spat.validation import one_line

    text = "a \x1b[1mbold\x1b[0m\nb \x1b]0;title\x07c \x1b[38;5;196mred\x1b[m\x00!"
    assert one_line(text, None) == "a bold b c red!"


# -------------------------------------------------------------------- the library, plain tensors
class _Linear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def test_evaluate_takes_any_module_and_plain_tensors():
    torch.manual_seed(0)
    model = _Linear().eval()
    x = torch.rand(30, 3, 2, 2)
    y = torch.randint(0, 3, (30,))
    report = evaluate(model, (x, y), EvalOptions(eps=0.05, attacks="fgsm", sanity_examples=0))
    with torch.no_grad():
        want = int((model(x).argmax(1) == y).sum())
    assert report.data["clean"]["correct"] == want
    assert report.data["n_examples"] == 30
    with pytest.raises(SpatError, match=r"in \[0, 1\]"):
        evaluate(model, (x * 255, y), EvalOptions(eps=0.05, attacks="fgsm", sanity_examples=0))
    with pytest.raises(SpatError, match="shape"):
        evaluate(model, (x[0], y), EvalOptions(eps=0.05, attacks="fgsm", sanity_examples=0))


def test_eval_official_spat_checkpoint_from_the_command_line(tmp_path: Path):
    """``spat eval --model official-spat`` end to end on 32x32 colour images (an npz dataset):
    the report's clean accuracy is the reference forward's."""
    import numpy as np

    g = np.random.default_rng(0)
    x_test = g.integers(0, 256, size=(20, 32, 32, 3), dtype=np.uint8)
    y_test = np.arange(20) % 10
    data = tmp_path / "colour.npz"
    np.savez(data, x_train=x_test, y_train=y_test, x_test=x_test, y_test=y_test)
    sd = official_wrn_state(10, 1, seed=5)
    weights = tmp_path / "model-wrn-epoch100.pt"
    torch.save(sd, weights)
    out = tmp_path / "out"
    assert main(["eval", "--model", "official-spat", "--weights", str(weights), "--dataset",
                 "npz", "--data-dir", str(data), "--attacks", "fgsm", "--eps", "8/255",
                 "--sanity-examples", "0", "--out", str(out), "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    x = torch.from_numpy(x_test).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        ref = reference_wrn(sd, x, 10, 1, cosine=True)
    correct = int((ref.argmax(1) == torch.from_numpy(y_test)).sum())
    assert report["clean"]["correct"] == correct
    saved = np.load(out / "predictions.npz")
    assert saved["clean"].tolist() == ref.argmax(1).tolist()  # every example's prediction
    assert report["architecture"] == "wrn10_1" and report["head"] == "cosine"
    assert report["model"] == "official-spat" and report["eps"] == pytest.approx(8 / 255)
    assert report["cosine_scale"] == 8.0  # the s of the attacked logits s·z
    assert report["attacks"][0]["correct"] <= correct
    # another s is recorded as given (clean predictions are the same: argmax of s·z)
    assert main(["eval", "--model", "official-spat", "--weights", str(weights), "--dataset",
                 "npz", "--data-dir", str(data), "--attacks", "fgsm", "--eps", "8/255",
                 "--sanity-examples", "0", "--out", str(tmp_path / "s4"), "--no-progress",
                 "--cosine-scale", "4"]) == 0
    again = json.loads((tmp_path / "s4" / "report.json").read_text())
    assert again["cosine_scale"] == 4.0 and again["clean"]["correct"] == correct


@pytest.mark.parametrize("model", ["official-trades", "export.safetensors", "tests:Net"])
def test_cosine_scale_is_refused_where_there_is_no_head_to_scale(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], model: str):
    """``--cosine-scale`` was silently ignored with official-trades (a linear head), a portable
    file (its own s) and a module; it is refused with one line, before anything is read."""
    out = tmp_path / "out"
    argv = ["eval", "--model", model, "--weights", str(tmp_path / "absent.pt"), "--dataset",
            "digits", "--cosine-scale", "4", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("spat: error: --cosine-scale only applies to --model official-spat")
    assert err.count("\n") == 1 and not out.exists()
    with pytest.raises(SpatError, match="only applies to --model official-spat"):
        spat.load_model(model, cosine_scale=8.0)


def test_cosine_scale_with_a_run_directory_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["eval", str(tmp_path), "--cosine-scale", "4"]) == 2
    assert "--cosine-scale goes with --model" in capsys.readouterr().err
