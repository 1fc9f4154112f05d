"""Training's validation and final test (``spat.train.validate.evaluate_split``) give the same
predictions in 2 processes (gloo on CPU) as in one.

Why equality can be exact: the examples are cut into the same batches of ``eval_batch_size`` in
both cases, batch ``b`` is evaluated by rank ``b mod W`` and its PGD random start comes from a
generator seeded by ``batch_seed(seed, b)`` (``spat.evaluation.sharding``, the scheme of
``spat eval``), so every example is attacked from the same start in the same batch. Here 37
examples in batches of 8 (rank 0 holds 21 of them, rank 1 16) under PGD-1 with a large ε, where
the random start decides many predictions.

This file is also the worker: ``python tests/test_validate_distributed.py RANK INIT OUT`` joins
a 2-process gloo group through the file ``INIT`` and saves rank RANK's predictions to ``OUT``.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
N, BATCH, SEED = 37, 8, 1234


def _setup():
    from spat.config import TrainConfig
    from spat.data import Split

    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    split = Split(images=torch.randint(0, 256, (N, 1, 8, 8), generator=g, dtype=torch.uint8),
                  labels=torch.randint(0, 10, (N,), generator=g))
    cfg = dataclasses.replace(TrainConfig(), eps=0.5, norm="linf", eval_batch_size=BATCH)
    return model, split, cfg


def _predict(seed: int, dist=None):
    from spat.train.validate import evaluate_split, examples_on_this_rank
    from spat.utils.distributed import SINGLE

    dist = dist or SINGLE
    model, split, cfg = _setup()
    seen: list[int] = []
    preds = evaluate_split(model, split, cfg, torch.device("cpu"), steps=1, seed=seed, dist=dist,
                           on_batch=seen.append)
    assert sum(seen) == examples_on_this_rank(split, cfg, dist)
    return preds, sum(seen)


def _worker(rank: int, init: str, out: str) -> int:
    import torch.distributed as tdist

    from spat.utils.distributed import DistContext

    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=2)
    try:
        preds, mine = _predict(SEED, DistContext(rank=rank, world_size=2, backend="gloo"))
        torch.save({"labels": preds.labels, "clean": preds.clean, "mine": mine,
                    **{f"adv/{k}": v for k, v in preds.adversarial.items()}}, out)
    finally:
        tdist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(_worker(int(sys.argv[1]), sys.argv[2], sys.argv[3]))


def test_two_processes_give_the_one_process_predictions(tmp_path: Path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    init = tmp_path / "init"
    outs = [tmp_path / f"rank{r}.pt" for r in range(2)]
    jobs = [subprocess.Popen([sys.executable, str(Path(__file__)), str(r), str(init),
                              str(outs[r])], cwd=REPO, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True) for r in range(2)]
    one, _ = _predict(SEED)  # meanwhile, in this process
    logs = []
    for job in jobs:
        try:
            logs.append(job.communicate(timeout=120)[0])
        except subprocess.TimeoutExpired:
            for j in jobs:
                j.kill()
            raise
    assert [j.returncode for j in jobs] == [0, 0], logs
    got = [torch.load(p) for p in outs]
    assert [g["mine"] for g in got] == [21, 16]  # batches 0, 2, 4 and 1, 3
    (name,) = one.adversarial
    for g in got:  # every rank holds every prediction, in split order
        assert torch.equal(g["labels"], one.labels)
        assert torch.equal(g["clean"], one.clean)
        assert torch.equal(g[f"adv/{name}"], one.adversarial[name])
    # the check has teeth: the random start decides predictions here, the attack changes some
    other, _ = _predict(SEED + 1)
    assert not torch.equal(other.adversarial[name], one.adversarial[name])
    assert not torch.equal(one.adversarial[name], one.clean)


def test_a_split_in_one_batch_is_attacked_from_the_stream_seed() -> None:
    """``batch_seed(seed, 0) == seed``: a split that fits one batch gives what one generator
    seeded with ``seed`` gives (the validation of every earlier single-batch run), later
    batches draw from seeds of their own."""
    from spat.attacks.presets import pgd
    from spat.evaluation.core import predict_under_attacks
    from spat.utils.rng import batch_seed

    assert batch_seed(SEED, 0) == SEED and len({batch_seed(SEED, b) for b in range(5)}) == 5
    model, split, cfg = _setup()
    cfg = dataclasses.replace(cfg, eval_batch_size=N)
    from spat.train.validate import evaluate_split

    ours = evaluate_split(model, split, cfg, torch.device("cpu"), steps=1, seed=SEED)
    gen = torch.Generator().manual_seed(SEED)
    plain = predict_under_attacks(model, split, [pgd(0.5, steps=1)], batch_size=N,
                                  generator=gen)
    assert torch.equal(ours.clean, plain.clean)
    assert torch.equal(ours.adversarial["PGD-1"], plain.adversarial["PGD-1"])
