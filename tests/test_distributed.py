"""torchrun / DDP on CPU (gloo, 2 processes): ``spat train`` under
``python -m torch.distributed.run --standalone --nproc_per_node=2`` gives the same training as
one process with the same global batch, and only rank 0 writes files.

What can be guaranteed, and why: with the same global batch, each rank's shard is half of the
one-process batch (the same examples), DDP averages the two half-batch mean gradients, which is
the one-process mean gradient up to float summation order (~1e-7 relative), and the epoch loss
is reduced as a sum over ranks. What differs by design is per-rank randomness: attack random
starts and dropout masks. So the comparison runs with ``--init none`` and dropout disabled
(SmallCNN's only random layer; it has no BatchNorm); then every training metric agrees up to
float rounding (tolerance 1e-4 relative) and the weights agree to 1e-4. Validation and the final
test are sharded batch by batch and gathered, each batch's random start seeded by its number
(``tests/test_validate_distributed.py`` checks exact equality for equal weights): here, with
weights equal only to 1e-4, clean accuracies are checked to one example (only a tie-breaking
flip from rounding could differ) and the PGD accuracies for their example counts. The second
part resumes the two-process run (epoch 1 -> 2) in the same torchrun job, so DDP resume (rank 0
reads, broadcasts) is exercised as well.

This file is also the torchrun worker: ``python tests/test_distributed.py ARGS`` runs
``spat.cli.main`` with dropout off.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

ARGS = ["--dataset", "digits", "--method", "pgd_at", "--init", "none", "--model", "small_cnn",
        "--train-subset", "256", "--val-size", "63", "--steps", "2", "--val-steps", "1",
        "--test-steps", "1", "--test-subset", "101", "--batch-size", "32",
        "--eval-batch-size", "40", "--schedule", "constant", "--no-progress",
        # fp32: the comparison is to fp32 rounding; bf16 autocast (the default on a CPU with
        # native bf16) rounds a half batch differently from the full batch (~1e-3 in the loss)
        "--amp", "off"]


def _without_dropout(model_for):
    """``model_for`` whose models have dropout p = 0 (no per-rank dropout masks)."""
    import torch

    def wrapped(cfg, info):
        model = model_for(cfg, info)
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        return model

    return wrapped


def _worker(argv: list[str]) -> int:
    """One torchrun rank: train epoch 1, then resume the same run to epoch 2."""
    import torch.distributed as dist

    import spat.build
    from spat.cli import main

    spat.build.model_for = _without_dropout(spat.build.model_for)
    out, name = argv[0], argv[1]
    # one process group for both calls (spat leaves a group it did not create alone): creating
    # the default group a second time in the same launch can deadlock (see shutdown_distributed)
    dist.init_process_group(backend="gloo")
    try:
        code = main(["train", *ARGS, "--epochs", "1", "--out-dir", out, "--name", name])
        if code:
            return code
        code = main(["train", "--resume", str(Path(out) / name), "--epochs", "2",
                     "--no-progress"])
        if code == 0:
            # both ranks done before either tears its group down: under load a rank whose peer
            # had already left aborted in gloo ("terminate called without an active exception")
            dist.barrier()
        return code
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":  # the torchrun worker
    sys.exit(_worker(sys.argv[1:]))


# --------------------------------------------------------------------------- the test

import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from spat import checkpoint as ckpt  # noqa: E402
from spat.cli import main  # noqa: E402


def _records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_match_one_process(tmp_path: Path, monkeypatch, capsys) -> None:
    out = tmp_path / "runs"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO),
                                         env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    log_path = tmp_path / "torchrun.log"
    log_file = log_path.open("w")
    job = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "--max_restarts=0", str(Path(__file__)), str(out), "ddp"],
        cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,  # its own process group: a timeout kills the workers as well
    )

    # meanwhile: the same training in this process, one process, 2 epochs straight
    import spat.build

    monkeypatch.setattr(spat.build, "model_for",
                        _without_dropout(spat.build.model_for))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", *ARGS, "--epochs", "2", "--out-dir", str(out),
                     "--name", "single"]) == 0
    finally:
        torch.set_num_threads(threads)
    capsys.readouterr()

    try:
        job.wait(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
        pytest.fail("torchrun job timed out:\n" + log_path.read_text())
    finally:
        log_file.close()
    log = log_path.read_text()
    assert job.returncode == 0, log
    ddp, single = out / "ddp", out / "single"

    # only rank 0 wrote, once: one run directory, no leftovers, one summary printed per call
    assert sorted(p.name for p in out.iterdir()) == ["ddp", "single"]
    assert not [p for p in ddp.rglob("*") if p.name.endswith(".tmp")]
    assert log.count("test  clean accuracy") == 2 and log.count("resuming") == 1, log

    a, b = _records(single), _records(ddp)
    assert [r["epoch"] for r in b] == [1, 2]
    for r1, r2 in zip(a, b, strict=True):
        assert r2["train_loss"] == pytest.approx(r1["train_loss"], rel=1e-4)
        assert r2["train_adv_acc"] == pytest.approx(r1["train_adv_acc"], abs=1 / 256 + 1e-9)
        # validation: sharded (batch 0 of 40 on rank 0, batch 1 of 23 on rank 1), gathered
        assert sum(map(sum, r2["val_adv_confusion"])) == 63
        assert abs(r2["val_clean_acc"] - r1["val_clean_acc"]) <= 1 / 63 + 1e-9

    w1 = load_file(str(ckpt.resolve(single, "last") / ckpt.WEIGHTS))
    w2 = load_file(str(ckpt.resolve(ddp, "last") / ckpt.WEIGHTS))
    assert ckpt.resolve(ddp, "last").name == "epoch_0002"
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-4)

    s1 = json.loads((single / "summary.json").read_text())
    s2 = json.loads((ddp / "summary.json").read_text())
    assert s2["world_size"] == 2 and s2["test_examples"] == s1["test_examples"] == 101
    if s2["best_epoch"] == s1["best_epoch"]:  # (chosen by the PGD accuracy: may differ)
        assert abs(s2["test_clean_acc"] - s1["test_clean_acc"]) <= 1 / 101 + 1e-9
    state = ckpt.load_state(ckpt.resolve(ddp, "last"))
    assert state["world_size"] == 2 and state["epoch"] == 1


def test_leaving_the_group_meets_the_other_ranks_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """A group spat created is left after a barrier (no rank tears it down while a peer still
    uses it), except when leaving on an error; a group the caller created is left alone."""
    import torch.distributed as dist

    from spat.utils.distributed import DistContext, shutdown_distributed

    calls: list[str] = []
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "barrier", lambda: calls.append("barrier"))
    monkeypatch.setattr(dist, "destroy_process_group", lambda: calls.append("destroy"))
    owned = DistContext(rank=0, world_size=2, local_rank=0, backend="gloo", owns_group=True)
    shutdown_distributed(owned)
    assert calls == ["barrier", "destroy"]
    calls.clear()
    shutdown_distributed(owned, meet=False)
    assert calls == ["destroy"]
    calls.clear()
    shutdown_distributed(DistContext(rank=0, world_size=2, local_rank=0, backend="gloo",
                                     owns_group=False))
    assert calls == []
