"""``spat eval`` of a run puts the run's model in NHWC (channels_last) where the run's own switch
resolves to on (``auto``: CPU and CUDA), as its training did, and records it in the report. The
per-example predictions equal those of the same evaluation of the NCHW model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from spat.build import load_data, load_run
from spat.evaluation import EvalOptions, evaluate
from spat.evaluation.evaluate_run import _memory_format, evaluate_run

OPTS = EvalOptions(attacks=("fgsm", "pgd20", "cw20", "aa-fast"), n_examples=60,
                   sanity_examples=0)


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _nhwc(model: torch.nn.Module) -> bool:
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs
    # (a weight with one input channel has both layouts at once)
    return (all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
            and not all(c.weight.is_contiguous() for c in convs))


@pytest.mark.parametrize("switch, device, expect", [
    ("auto", "cpu", True), ("on", "cpu", True), ("off", "cpu", False), ("auto", "meta", False)])
def test_memory_format_follows_the_runs_switch(digits_run: Path, switch: str, device: str,
                                               expect: bool) -> None:
    model = load_run(digits_run).model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rec = _memory_format(model, switch, device)
    assert rec["channels_last"] is expect and rec["reason"]
    assert _nhwc(model) is expect
    for k, v in model.state_dict().items():  # the values are untouched, only their layout
        assert torch.equal(v, before[k])


def test_nhwc_eval_gives_the_nchw_predictions(digits_run: Path, tmp_path: Path) -> None:
    report, out = evaluate_run(digits_run, OPTS, out=tmp_path / "eval", device="cpu",
                               progress=False, log=lambda _s: None)
    doc = json.loads((out / "report.json").read_text())
    assert doc["memory_format"]["channels_last"] is True  # the run's switch is auto, on CPU
    run = load_run(digits_run)
    assert not _nhwc(run.model)
    reference = evaluate(run.model, load_data(run.config).test, OPTS.with_threat(
        float(run.config.eps), run.config.norm), device="cpu")
    with np.load(out / "predictions.npz") as z:
        got = {k: z[k] for k in z.files}
    ref = reference.predictions
    assert np.array_equal(got["labels"], ref.labels.numpy())
    assert np.array_equal(got["clean"], ref.clean.numpy())
    assert set(ref.adversarial) == {"FGSM", "PGD-20", "CW-20", "AutoAttack-fast"}
    for name, pred in ref.adversarial.items():
        assert np.array_equal(got[f"adv/{name}"], pred.numpy()), name
    assert 0 < report.data["robust_acc"] < report.data["clean_acc"]
