"""``spat eval`` sharded under torchrun (gloo on CPU, 2 processes) gives the one-process report.

Why equality can be exact: the examples are cut into the same batches in both cases and each
batch's random start is seeded by (attack seed, batch number) (``spat.evaluation.sharding``), so
every example is attacked with the same start, in the same batch, with the same arithmetic,
whichever rank attacks it. The test runs 4 batches of 40, 40, 40 and 10 examples (rank 0 gets
two, rank 1 two, of different sizes) with random-start attacks (PGD and CW, uniform start), and
compares every per-example prediction and every number of the report. AutoAttack is sharded as
documented (each rank runs it on its batches): its results are checked for consistency only.

This file is also the torchrun worker: ``python tests/test_eval_distributed.py ARGS`` runs
``spat.cli.main(["eval", *ARGS])``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EVAL = ["--attacks", "fgsm,pgd20,cw20,aa-fast", "--n-examples", "130", "--batch-size", "40",
        "--sanity-examples", "20", "--no-progress", "--device", "cpu"]

if __name__ == "__main__":  # the torchrun worker
    from spat.cli import main

    sys.exit(main(["eval", *sys.argv[1:]]))


# --------------------------------------------------------------------------- the test

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from spat.cli import main  # noqa: E402
from spat.data import Split  # noqa: E402
from spat.evaluation.sharding import combine, my_batches, shard_index  # noqa: E402
from spat.utils.distributed import DistContext  # noqa: E402


def test_batches_are_dealt_round_robin_and_cover_every_example() -> None:
    r0, r1 = DistContext(rank=0, world_size=2), DistContext(rank=1, world_size=2)
    assert my_batches(130, 40, r0) == [(0, 0, 40), (2, 80, 120)]
    assert my_batches(130, 40, r1) == [(1, 40, 80), (3, 120, 130)]
    both = torch.cat([shard_index(130, 40, r0), shard_index(130, 40, r1)])
    assert sorted(both.tolist()) == list(range(130))
    # one process: combine is the identity on its values
    assert combine(torch.tensor([3, -1, 0]), torch.arange(3), 3).tolist() == [3, -1, 0]


def _load(out: Path) -> tuple[dict, dict[str, np.ndarray]]:
    report = json.loads((out / "report.json").read_text())
    with np.load(out / "predictions.npz") as z:
        arrays = {k: z[k] for k in z.files}
    return report, arrays


def test_sharded_eval_equals_one_process(digits_run: Path, tmp_path: Path, capsys) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    log_path = tmp_path / "torchrun.log"
    sharded, single = tmp_path / "sharded", tmp_path / "single"
    with log_path.open("w") as log_file:
        job = subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
             "--max_restarts=0", str(Path(__file__)), str(digits_run), *EVAL,
             "--out", str(sharded)],
            cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,  # its own process group: a timeout kills the workers too
        )
        # meanwhile, the same evaluation in this process
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            assert main(["eval", str(digits_run), *EVAL, "--out", str(single)]) == 0
        finally:
            torch.set_num_threads(threads)
        capsys.readouterr()
        try:
            job.wait(timeout=300)
        except subprocess.TimeoutExpired:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
            pytest.fail("torchrun job timed out:\n" + log_path.read_text())
    log = log_path.read_text()
    assert job.returncode == 0, log
    assert log.count("wrote ") == 1 and log.count("ensemble") == 1, log  # rank 0 only

    (r1, p1), (r2, p2) = _load(single), _load(sharded)
    assert r1["settings"]["processes"] == 1 and r2["settings"]["processes"] == 2
    assert set(p1) == set(p2) == {"labels", "clean", "adv/FGSM", "adv/PGD-20", "adv/CW-20",
                                  "adv/AutoAttack-fast"}
    for k in ("labels", "clean", "adv/FGSM", "adv/PGD-20", "adv/CW-20"):
        np.testing.assert_array_equal(p1[k], p2[k], err_msg=k)
    # the attacks are not trivial here: some examples are right clean and wrong under PGD
    assert ((p1["clean"] == p1["labels"]) & (p1["adv/PGD-20"] != p1["labels"])).sum() >= 5
    assert r1["clean"] == r2["clean"]
    white = [a for a in r1["attacks"] if a["kind"] != "autoattack"]
    assert len(white) == 3
    for a, b in zip(white, r2["attacks"], strict=False):
        timing = ("seconds", "reused")
        assert {k: v for k, v in a.items() if k not in timing} == \
            {k: v for k, v in b.items() if k not in timing}, a["name"]
    assert r1["sanity"] == r2["sanity"]
    # AutoAttack: each rank ran the official algorithm on its batches
    aa = r2["attacks"][-1]
    assert aa["details"]["autoattack"]["shards"] == 2
    pred = p2["adv/AutoAttack-fast"]
    assert pred.shape == (130,) and pred.min() >= 0 and pred.max() <= 9
    assert aa["accuracy"] <= r2["clean_acc"]
    assert aa["details"]["robust_count_after"]["clean"] == int((p2["clean"] == p2["labels"]).sum())


def test_each_batch_draws_from_its_own_seed() -> None:
    """Batch b's random start comes from a generator seeded with seed_of(b), fresh for each
    batch: what rank r draws for a batch does not depend on the batches before it."""
    from spat.evaluation.sharding import predict_sharded_batches

    class Recorder:
        name = "recorder"

        def __init__(self) -> None:
            self.draws: list[float] = []

        def run(self, model, x, y, generator=None):
            self.draws.append(torch.rand(1, generator=generator).item())
            return x

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 4))
    x, y = torch.rand(10, 1, 4, 4), torch.randint(0, 4, (10,))
    spec = Recorder()
    preds = predict_sharded_batches(model, Split(images=x, labels=y), spec, batch_size=4,
                                    device=torch.device("cpu"), seed_of=lambda b: 100 + b)
    expected = [torch.rand(1, generator=torch.Generator().manual_seed(100 + b)).item()
                for b in range(3)]
    assert spec.draws == expected
    assert preds.tolist() == model(x).argmax(1).tolist()  # the recorder does not perturb
