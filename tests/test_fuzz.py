"""Fuzz (issue 15): generated corruptions of every file spat reads, run through every subcommand.

Each case corrupts one file of a copy of ONE tiny finished run (trained once for the module) —
truncation, bit flips, random bytes, type swaps, deleted keys, non-finite values, a code-running
pickle — and runs one subcommand in-process (``spat.cli.main``). The assertion, for every case:
exit 0 or 2, never an internal error or a traceback on stderr, an exit 2 is exactly one line
``spat: error: ...`` and changed nothing in the run directory (no partial output), and no pickle
payload ever ran. Files: the run's config.json, data.json, summary.json, metrics.jsonl, the
checkpoint pointers, state.pt, model.safetensors, eval/report.json and eval/predictions.npz;
training TOML configs, ``.npz`` datasets and ``spat study`` files (``--dry-run``).

Plot drawing is stubbed out (this is about reading files; tests/test_plots.py draws) so that the
cases that pass validation stay fast.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from spat import checkpoint as ckpt
from spat.cli import main

TINY = {"train_subset": 32, "val_size": 16, "epochs": 1, "steps": 1, "val_steps": 1,
        "test_steps": 1, "test_subset": 16, "batch_size": 16}
TINY_ARGS = [x for k, v in TINY.items() for x in (f"--{k.replace('_', '-')}", str(v))]
FAST_EVAL = ["--attacks", "fgsm", "--sanity-examples", "0", "--n-examples", "16",
             "--batch-size", "16", "--no-progress"]
FAST_COMPARE = ["--max-examples", "16", "--steps", "1", "--batch-size", "16"]
FAST_ANALYZE = [*FAST_COMPARE, "--no-features"]
SWAPS: list[Any] = ["x", 2.5, True, None, [], {}, -1, "NaN", [1, "a"], 0]
PAYLOAD = "pwned"  # the file a code-running pickle would create


# ----------------------------------------------------------------------------- corruptions
def truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(0, max(1, len(data)))]


def flip_bits(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    if not b:
        return bytes([rng.randrange(256)])
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(len(b))
        b[i] ^= 1 << rng.randrange(8)
    return bytes(b)


def random_bytes(data: bytes, rng: random.Random) -> bytes:
    return bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path (dict keys and list indices) inside a JSON-like object."""
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.append((*prefix, k))
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:4]):
            out.append((*prefix, i))
            out += _paths(v, (*prefix, i))
    return out


def _parent(obj: Any, path: tuple) -> Any:
    for k in path[:-1]:
        obj = obj[k]
    return obj


def swap_type(obj: Any, rng: random.Random) -> Any:
    paths = _paths(obj)
    if not paths:
        return rng.choice(SWAPS)
    path = rng.choice(paths)
    _parent(obj, path)[path[-1]] = rng.choice(SWAPS)
    return obj


def delete_key(obj: Any, rng: random.Random) -> Any:
    paths = [p for p in _paths(obj) if isinstance(p[-1], str)]
    if not paths:
        return {}
    path = rng.choice(paths)
    del _parent(obj, path)[path[-1]]
    return obj


BYTE_MUTATIONS = {"truncate": truncate, "flip": flip_bits, "random": random_bytes}
JSON_MUTATIONS = {"swap": swap_type, "delete": delete_key}


def corrupt_json_file(path: Path, kind: str, rng: random.Random) -> None:
    if kind in BYTE_MUTATIONS:
        path.write_bytes(BYTE_MUTATIONS[kind](path.read_bytes(), rng))
    else:
        path.write_text(json.dumps(JSON_MUTATIONS[kind](json.loads(path.read_text()), rng)))


def corrupt_jsonl_file(path: Path, kind: str, rng: random.Random) -> None:
    if kind in BYTE_MUTATIONS:
        path.write_bytes(BYTE_MUTATIONS[kind](path.read_bytes(), rng))
        return
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    i = rng.randrange(len(lines))
    lines[i] = JSON_MUTATIONS[kind](lines[i], rng)
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))


def _state_paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.append((*prefix, k))
            out += _state_paths(v, (*prefix, k))
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj[:4]):
            if isinstance(obj, list):
                out.append((*prefix, i))
            out += _state_paths(v, (*prefix, i))
    return out


def corrupt_state(path: Path, kind: str, rng: random.Random, tmp: Path) -> None:
    if kind in BYTE_MUTATIONS:
        path.write_bytes(BYTE_MUTATIONS[kind](path.read_bytes(), rng))
        return
    if kind == "payload":
        class Touch:
            def __reduce__(self):
                return (os.system, (f"touch {tmp / PAYLOAD}",))

        state = torch.load(path, weights_only=True)
        state["config"] = Touch()
        torch.save(state, path)
        return
    state = torch.load(path, weights_only=True)
    paths = [p for p in _state_paths(state) if not isinstance(_parent(state, p), tuple)]
    p = rng.choice(paths)
    if kind == "delete":
        parent = _parent(state, p)
        if isinstance(parent, dict):
            del parent[p[-1]]
        else:
            parent.pop(p[-1])
    elif kind == "nan":  # a non-finite tensor somewhere (momentum buffers, RNG states)
        tensors = [q for q in paths if isinstance(_parent(state, q)[q[-1]], torch.Tensor)
                   and _parent(state, q)[q[-1]].is_floating_point()]
        if tensors:
            q = rng.choice(tensors)
            t = _parent(state, q)[q[-1]].contiguous().clone()
            t.view(-1)[0] = float("nan")
            _parent(state, q)[q[-1]] = t
        else:
            state["best_val_robust_acc"] = float("nan")
    else:  # swap: plain values and tensors of another type/shape
        _parent(state, p)[p[-1]] = rng.choice([*SWAPS, torch.zeros(3), torch.zeros(2, 2,
                                                                                   dtype=torch.uint8)])
    torch.save(state, path)


def corrupt_weights(path: Path, kind: str, rng: random.Random) -> None:
    from safetensors.torch import load_file, save_file

    if kind in BYTE_MUTATIONS:
        data = path.read_bytes()
        if kind == "flip" and rng.random() < 0.5:  # flip inside the JSON header
            n = int.from_bytes(data[:8], "little")
            b = bytearray(data)
            for _ in range(rng.randint(1, 4)):
                i = rng.randrange(8, 8 + n)
                b[i] ^= 1 << rng.randrange(8)
            path.write_bytes(bytes(b))
        else:
            path.write_bytes(BYTE_MUTATIONS[kind](data, rng))
        return
    w = load_file(str(path))
    name = rng.choice(sorted(w))
    if kind == "delete":
        del w[name]
    elif kind == "nan":
        floats = [k for k, v in w.items() if v.is_floating_point()]
        name = rng.choice(floats)
        w[name] = w[name].contiguous().clone()
        w[name].view(-1)[rng.randrange(w[name].numel())] = rng.choice([float("nan"),
                                                                        float("inf")])
    else:  # swap: wrong shape or dtype, or an extra tensor
        choice = rng.randrange(3)
        if choice == 0:
            w[name] = torch.zeros(3)
        elif choice == 1:
            w[name] = w[name].to(torch.float64) if w[name].is_floating_point() else \
                w[name].float()
        else:
            w["extra.weight"] = torch.zeros(2)
    save_file(w, str(path))


def corrupt_predictions(path: Path, kind: str, rng: random.Random) -> None:
    if kind in BYTE_MUTATIONS:
        path.write_bytes(BYTE_MUTATIONS[kind](path.read_bytes(), rng))
        return
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    name = rng.choice(sorted(arrays))
    if kind == "delete":
        del arrays[name]
    else:  # swap: out-of-range classes, wrong length, float, 2-D; strings: length, type
        a = arrays[name]
        options: list[Callable[[], np.ndarray]] = (
            [lambda: a + 1000, lambda: a[:-3], lambda: a.astype(np.float32) + 0.5,
             lambda: a.reshape(-1, 1)] if a.dtype.kind in "iuf" else
            [lambda: a[:-1], lambda: a.reshape(-1, 1), lambda: np.arange(len(a))])
        arrays[name] = rng.choice(options)()
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.write_bytes(buf.getvalue())


# ----------------------------------------------------------------------------- the run
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """One tiny finished digits run with an eval (FGSM) beside it: trained once per module."""
    out = tmp_path_factory.mktemp("fuzzruns")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", *TINY_ARGS, "--no-progress", "--out-dir", str(out),
                     "--name", "tiny"]) == 0
        assert main(["eval", str(out / "tiny"), *FAST_EVAL]) == 0
    finally:
        torch.set_num_threads(n)
    return out / "tiny"


@pytest.fixture(autouse=True)
def _fast(monkeypatch):
    """One thread; plots not drawn (a stub returns the path it was given); a short
    permutation test (the statistics are tested in tests/test_analysis.py)."""
    from spat.analysis import plots

    def stub(*args: Any, **kwargs: Any) -> Any:
        return next((a for a in (*args, *kwargs.values()) if isinstance(a, Path)), None)

    for name in dir(plots):
        if name.startswith("plot_"):
            monkeypatch.setattr(plots, name, stub)
    import spat.analysis.analyze as analyze

    if hasattr(analyze, "mantel_spearman"):  # a 999-permutation test is seconds per case
        real = analyze.mantel_spearman
        monkeypatch.setattr(analyze, "mantel_spearman",
                            lambda *a, **k: real(*a, **{**k, "permutations": 9}))
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def snapshot(root: Path) -> dict[str, str]:
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): ("dir" if p.is_dir() else
                                        hashlib.md5(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*"))}


def _pointer(run: Path, name: str) -> Path:
    return run / "checkpoints" / f"{name}.json"


# file kind -> (path in the run or None for generated inputs, mutation kinds, commands)
RUN_FILES: dict[str, tuple[Callable[[Path], Path], tuple[str, ...], tuple[str, ...]]] = {
    "config.json": (lambda r: r / "config.json", ("truncate", "flip", "swap", "delete"),
                    ("resume", "eval")),
    "data.json": (lambda r: r / "data.json", ("truncate", "flip", "swap", "delete", "random"),
                  ("eval", "analyze", "compare")),
    "summary.json": (lambda r: r / "summary.json", ("truncate", "flip", "swap", "delete"),
                     ("resume",)),
    "metrics.jsonl": (lambda r: r / "metrics.jsonl", ("truncate", "flip", "swap", "delete"),
                      ("analyze", "resume")),
    "last.json": (lambda r: _pointer(r, "last"), ("truncate", "flip", "swap", "delete",
                                                  "random"), ("resume", "eval")),
    "best.json": (lambda r: _pointer(r, "best"), ("truncate", "flip", "swap", "delete"),
                  ("eval", "analyze")),
    "state.pt": (lambda r: ckpt.resolve(r, "best") / ckpt.STATE,
                 ("truncate", "flip", "random", "swap", "delete", "nan", "payload"),
                 ("resume", "eval", "analyze", "compare")),
    "model.safetensors": (lambda r: ckpt.resolve(r, "best") / ckpt.WEIGHTS,
                          ("truncate", "flip", "random", "swap", "delete", "nan"),
                          ("resume", "eval", "analyze", "compare")),
    "report.json": (lambda r: r / "eval" / "report.json", ("truncate", "flip", "swap",
                                                            "delete"),
                    ("analyze", "compare", "export")),
    "predictions.npz": (lambda r: r / "eval" / "predictions.npz", ("truncate", "flip", "swap",
                                                                   "delete", "random"),
                        ("analyze", "compare")),
}


def _cases() -> list[tuple[str, str, str, int]]:
    """(file kind, mutation, command, seed): every (kind, mutation, command) combination, with
    several seeds, cycled until there are at least 200 run-file cases (``SPAT_FUZZ_CASES=2000``
    for a longer hunt; ``SPAT_FUZZ_SEED`` shifts the seeds)."""
    combos = [(k, m, c) for k, (_, ms, cs) in RUN_FILES.items() for m in ms for c in cs]
    cases = []
    seed = int(os.environ.get("SPAT_FUZZ_SEED", "0"))
    while len(cases) < max(200, int(os.environ.get("SPAT_FUZZ_CASES", "200"))):
        for k, m, c in combos:
            cases.append((k, m, c, seed))
            seed += 1
    return cases


CASES = _cases()


def _argv(command: str, run: Path, tmp: Path) -> list[str]:
    return {"resume": ["train", "--resume", str(run), "--no-progress"],
            "eval": ["eval", str(run), *FAST_EVAL],
            "analyze": ["analyze", str(run), *FAST_ANALYZE],
            "compare": ["compare", str(run), str(run), *FAST_COMPARE, "--out",
                        str(tmp / "cmp")],
            "export": ["export", str(run), "--out", str(tmp / "cmp")]}[command]


def check_outcome(code: int, err: str) -> None:
    assert code in (0, 2), (code, err)
    assert "Traceback" not in err and "internal error" not in err, err
    if code == 2:
        lines = [x for x in err.strip().splitlines() if x.startswith("spat: error: ")]
        assert len(lines) == 1, err


def run_main(capsys, argv: list[str]) -> tuple[int, str]:
    capsys.readouterr()
    code = main(argv)
    return code, capsys.readouterr().err


@pytest.mark.parametrize(("kind", "mutation", "command", "seed"), CASES,
                         ids=[f"{k}-{m}-{c}-{s}" for k, m, c, s in CASES])
def test_corrupted_run_file(tiny_run: Path, tmp_path: Path, capsys, kind: str, mutation: str,
                           command: str, seed: int) -> None:
    run = tmp_path / "runs" / "tiny"
    shutil.copytree(tiny_run, run)
    rng = random.Random(seed)
    target = RUN_FILES[kind][0](run)
    if kind == "state.pt":
        corrupt_state(target, mutation, rng, tmp_path)
    elif kind == "model.safetensors":
        corrupt_weights(target, mutation, rng)
    elif kind == "predictions.npz":
        corrupt_predictions(target, mutation, rng)
    elif kind == "metrics.jsonl":
        corrupt_jsonl_file(target, mutation, rng)
    else:
        corrupt_json_file(target, mutation, rng)
    before = snapshot(run)
    code, err = run_main(capsys, _argv(command, run, tmp_path))
    check_outcome(code, err)
    if code == 2:  # a refusal wrote nothing: no partial output, no stale lock
        assert snapshot(run) == before, kind
        assert not (tmp_path / "cmp").exists()
    assert not (tmp_path / PAYLOAD).exists(), "a pickle payload ran"


# ----------------------------------------------------------------------------- generated inputs
def _toml_text(values: dict[str, Any]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(fmt(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k} = {fmt(x)}" for k, x in v.items()) + "}"
        return repr(v)

    return "".join(f"{k} = {fmt(v)}\n" for k, v in values.items() if v is not None)


TOML_CASES = [(m, s) for s in range(6) for m in ("truncate", "flip", "swap", "delete")]


@pytest.mark.parametrize(("mutation", "seed"), TOML_CASES,
                         ids=[f"{m}-{s}" for m, s in TOML_CASES])
def test_corrupted_train_config(tmp_path: Path, capsys, mutation: str, seed: int) -> None:
    rng = random.Random(1000 + seed)
    values: dict[str, Any] = {**TINY, "eps": "8/255", "lr": 0.05, "schedule": "cosine",
                              "deterministic": True, "method": "pgd_at"}
    if mutation in BYTE_MUTATIONS:
        text = BYTE_MUTATIONS[mutation](_toml_text(values).encode(), rng)
    else:
        key = rng.choice([k for k in values if k not in TINY or mutation == "swap"])
        if mutation == "swap":
            values[key] = rng.choice([v for v in SWAPS if v is not None])
        else:
            del values[key]
        text = _toml_text(values).encode()
    cfg = tmp_path / "c.toml"
    cfg.write_bytes(text)
    out = tmp_path / "runs"
    code, err = run_main(capsys, ["train", "--config", str(cfg), "--out-dir", str(out),
                                  "--no-progress", *_tiny_args_if_missing(text)])
    check_outcome(code, err)
    if code == 2:
        assert not out.exists() or not any(out.iterdir())


def _tiny_args_if_missing(text: bytes) -> list[str]:
    """A truncated TOML may have lost the tiny settings: keep the run tiny from the command
    line for the keys the file no longer sets (flags override the file only where given)."""
    s = text.decode("utf-8", "replace")
    return [x for k, v in TINY.items() if f"{k} =" not in s
            for x in (f"--{k.replace('_', '-')}", str(v))]


def _npz_dataset(path: Path) -> None:
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.integers(0, 256, (48, 8, 8), dtype=np.uint8),
             y_train=np.arange(48) % 3, x_test=rng.integers(0, 256, (16, 8, 8), dtype=np.uint8),
             y_test=np.arange(16) % 3, class_names=np.array(["a", "b", "c"]))


NPZ_CASES = [(m, s) for s in range(4) for m in ("truncate", "flip", "swap", "delete")]


@pytest.mark.parametrize(("mutation", "seed"), NPZ_CASES, ids=[f"{m}-{s}" for m, s in NPZ_CASES])
def test_corrupted_npz_dataset(tmp_path: Path, capsys, mutation: str, seed: int) -> None:
    rng = random.Random(2000 + seed)
    data = tmp_path / "d.npz"
    _npz_dataset(data)
    if mutation in BYTE_MUTATIONS:
        data.write_bytes(BYTE_MUTATIONS[mutation](data.read_bytes(), rng))
    else:
        corrupt_predictions(data, mutation, rng)  # the same array-level corruptions
    out = tmp_path / "runs"
    code, err = run_main(capsys, ["train", "--dataset", "npz", "--data-dir", str(data),
                                  "--model", "small_cnn", "--out-dir", str(out), *TINY_ARGS,
                                  "--val-size", "8", "--no-progress"])
    check_outcome(code, err)
    if code == 2:
        assert not out.exists() or not any(out.iterdir())


STUDY = {"study": {"name": "fz", "out_dir": "OUT", "datasets": ["digits"], "seeds": [0, 1],
                   "baseline": "pgd_at"},
         "train": {"epochs": 1, "train_subset": 32},
         "variants": {"pgd_at": {"method": "pgd_at"}, "spat": {"method": "spat"}},
         "eval": {"attacks": ["fgsm"], "n_examples": 16}}
STUDY_CASES = [(m, s) for s in range(5) for m in ("truncate", "flip", "swap", "delete")]


@pytest.mark.skipif(not (Path(__file__).parents[1] / "src" / "spat" / "study").is_dir(),
                    reason="spat study is not in this checkout")
@pytest.mark.parametrize(("mutation", "seed"), STUDY_CASES,
                         ids=[f"{m}-{s}" for m, s in STUDY_CASES])
def test_corrupted_study_file(tmp_path: Path, capsys, mutation: str, seed: int) -> None:
    rng = random.Random(3000 + seed)
    study = json.loads(json.dumps(STUDY).replace("OUT", str(tmp_path / "studies")))
    if mutation in JSON_MUTATIONS:
        study = JSON_MUTATIONS[mutation](study, rng)
    text = "".join(f"[{sec}]\n" + _toml_text(v) if isinstance(v, dict) and sec != "variants"
                   else "" for sec, v in (study.items() if isinstance(study, dict) else []))
    if isinstance(study, dict) and isinstance(study.get("variants"), dict):
        for name, v in study["variants"].items():
            text += f"[variants.{name}]\n" + (_toml_text(v) if isinstance(v, dict) else "")
    data = text.encode()
    if mutation in BYTE_MUTATIONS:
        data = BYTE_MUTATIONS[mutation](data, rng)
    f = tmp_path / "study.toml"
    f.write_bytes(data)
    code, err = run_main(capsys, ["study", str(f), "--dry-run"])
    check_outcome(code, err)


def test_enough_cases() -> None:
    total = len(CASES) + len(TOML_CASES) + len(NPZ_CASES) + len(STUDY_CASES)
    assert len(CASES) >= 200 and total >= 260
    kinds = {k for k, *_ in CASES}
    assert kinds == set(RUN_FILES)
    assert {c for *_, c, _ in CASES} == {"resume", "eval", "analyze", "compare", "export"}
