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
from spat.errors import SpatError

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
            [lambda: a.astype(np.int64) + 1000, lambda: a[:-3],
             lambda: a.astype(np.float32) + 0.5, lambda: a.reshape(-1, 1)]
            if a.dtype.kind in "iuf" else
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


# ----------------------------------------------------------------------------- values at entry
# Issue 25: every value validated where it enters, with one line and exit 2 (docs/reliability.md).
def run_cli(capsys, argv: list[str]) -> tuple[int, str]:
    """``main(argv)`` → (exit code, stderr), an argparse refusal (``SystemExit``) included."""
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:
        code = int(e.code or 0)
    return code, capsys.readouterr().err


def assert_one_line_refusal(code: int, err: str, *needles: str) -> None:
    """Exit 2, exactly one stderr line ``spat: error: ...``, holding every needle."""
    assert code == 2, err
    assert "Traceback" not in err and "internal error" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("spat: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, err)


BIG = 10**400  # JSON and TOML integers are unbounded in Python; JSON's 1e400 reads as inf
NUMBER_CASES = [
    ("json", '"epochs": ' + str(BIG), "field 'epochs' must be an integer that fits in 64 bits"),
    ("json", '"lr": ' + str(BIG), "field 'lr' must be a finite number"),
    ("json", '"lr": 1e400', "field 'lr' must be a finite number"),
    ("json", '"seed": ' + str(2**63), "field 'seed' must be an integer that fits in 64 bits"),
    ("json", '"train_subset": ' + str(-(2**63) - 1), "fits in 64 bits"),
    ("json", '"epochs": 1' + "0" * 5000, "not valid JSON: number out of range"),
    ("toml", "seed = " + str(2**64), "field 'seed' must be an integer that fits in 64 bits"),
    ("toml", "batch_size = " + str(10**30), "field 'batch_size' must be an integer that fits"),
    ("toml", "lr = 1e400", "field 'lr' must be a finite number"),
    ("toml", "lr = inf", "field 'lr' must be a finite number"),
    ("toml", "epochs = 1" + "0" * 5000, "not valid TOML: number out of range"),
]


@pytest.mark.parametrize(("kind", "entry", "message"), NUMBER_CASES,
                         ids=[f"{k}-{e[:24]}" for k, e, _ in NUMBER_CASES])
def test_config_numbers_out_of_range_are_one_line(tmp_path: Path, capsys, kind: str, entry: str,
                                                  message: str) -> None:
    cfg = tmp_path / f"c.{kind}"
    cfg.write_text("{" + entry + "}" if kind == "json" else entry + "\n")
    out = tmp_path / "runs"
    code, err = run_cli(capsys, ["train", "--config", str(cfg), "--out-dir", str(out),
                                 "--no-progress"])
    assert_one_line_refusal(code, err, message, str(cfg))
    assert len(err) < 400  # the 400-digit value is not echoed
    assert not out.exists()


DEEP = 100_000


def _deep_json(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("kind", ["json-list", "json-object", "toml-array", "toml-table"])
def test_deeply_nested_config_is_one_line(tmp_path: Path, capsys, kind: str) -> None:
    text = {"json-list": _deep_json(DEEP),
            "json-object": '{"a":' * DEEP + "1" + "}" * DEEP,
            "toml-array": "eps = " + _deep_json(DEEP),
            "toml-table": "eps = " + "{a = " * DEEP + "1" + "}" * DEEP}[kind]
    cfg = tmp_path / ("c.json" if kind.startswith("json") else "c.toml")
    cfg.write_text(text)
    out = tmp_path / "runs"
    code, err = run_cli(capsys, ["train", "--config", str(cfg), "--out-dir", str(out)])
    assert_one_line_refusal(code, err, "nested deeper than 64 levels")
    assert not out.exists()


def test_json_and_toml_nesting_bound() -> None:
    """MAX_NESTING levels are read, one more is refused, also below Python's own limit."""
    from spat.validation import MAX_NESTING, loads_json, loads_toml, nesting_depth

    ok = _deep_json(MAX_NESTING)
    assert nesting_depth(loads_json(ok)) == MAX_NESTING
    assert nesting_depth(loads_toml("a = " + _deep_json(MAX_NESTING - 1))) == MAX_NESTING
    for text in (_deep_json(MAX_NESTING + 1), _deep_json(900), _deep_json(DEEP)):
        with pytest.raises(json.JSONDecodeError, match="nested deeper"):
            loads_json(text)
    with pytest.raises(ValueError, match="nested deeper"):
        loads_toml("a = " + _deep_json(MAX_NESTING))
    assert loads_json('{"a": NaN}')["a"] != loads_json('{"a": NaN}')["a"]  # NaN still read


# a run file replaced by 100,000 levels of nesting, read by each command that reads it, and the
# exit code: 0 where the file is optional there (eval reads the config from state.pt; a finished
# run's bad summary is recomputed; compare ignores an unreadable report), else 2
DEEP_RUN_FILES = [("config.json", "resume", 2), ("config.json", "eval", 0),
                  ("last.json", "resume", 2), ("best.json", "eval", 2),
                  ("data.json", "analyze", 2), ("summary.json", "resume", 0),
                  ("metrics.jsonl", "analyze", 2), ("report.json", "export", 2),
                  ("report.json", "compare", 0)]


@pytest.mark.parametrize(("kind", "command", "expected"), DEEP_RUN_FILES,
                         ids=[f"{k}-{c}" for k, c, _ in DEEP_RUN_FILES])
def test_deeply_nested_run_file(tiny_run: Path, tmp_path: Path, capsys, kind: str,
                                command: str, expected: int) -> None:
    run = tmp_path / "runs" / "tiny"
    shutil.copytree(tiny_run, run)
    target = RUN_FILES[kind][0](run)
    if kind == "metrics.jsonl":  # a deep line before the last one (the last may be torn)
        lines = target.read_text().splitlines()
        target.write_text(_deep_json(DEEP) + "\n" + "\n".join(lines) + "\n")
    else:
        target.write_text(_deep_json(DEEP))
    before = snapshot(run)
    code, err = run_main(capsys, _argv(command, run, tmp_path))
    check_outcome(code, err)
    assert code == expected, err
    if code == 2:
        assert str(target) in err and "JSON" in err
        assert snapshot(run) == before
        assert not (tmp_path / "cmp").exists()


def test_deeply_nested_study_file(tmp_path: Path, capsys) -> None:
    f = tmp_path / "study.toml"
    f.write_text('[study]\nname = "fz"\ndatasets = ' + _deep_json(DEEP) + "\n")
    code, err = run_cli(capsys, ["study", str(f), "--dry-run"])
    assert_one_line_refusal(code, err, "nested deeper than 64 levels")


# each knob at a value outside its meaningful range: (method, flag, value, range, reason word)
KNOB_CASES = [
    ("spat", "--m", "-100", "m must be in [0, 1)", "-m/2"),
    ("spat", "--m", "1", "m must be in [0, 1)", "largest cosine"),
    ("spat", "--m", "-0.01", "m must be in [0, 1)", "(1+m)/2"),
    ("trades", "--m", "2.5", "m must be in [0, 1)", "self-paced CE"),
    ("pgd_at", "--m", "-1", "m must be in [0, 1)", "self-paced CE"),
    ("standard", "--m", "1.5", "m must be in [0, 1)", "self-paced CE"),
    ("mart", "--m", "-0.5", "m must be in [0, 1)", "self-paced CE"),
    ("spat", "--n", "-0.2", "n must be >= 0 and finite", "n*KL(p||q)"),
    ("mart", "--n", "-1", "n must be >= 0 and finite", "n*KL(p||q)"),
    ("pgd_at", "--n", "-3", "n must be >= 0 and finite", "n*KL(p||q)"),
    ("spat", "--beta", "-6", "beta must be >= 0 and finite", "L_acc + beta*L_rob"),
    ("trades", "--beta", "-0.001", "beta must be >= 0 and finite", "L_acc + beta*L_rob"),
    ("mart", "--beta", "-1", "beta must be >= 0 and finite", "lambda weights MART"),
    ("spat", "--cosine-scale", "0", "cosine scale must be > 0 and finite", "uniform"),
    ("spat", "--cosine-scale", "-8", "cosine scale must be > 0 and finite", "reverse"),
    ("spat", "--m", "nan", "field 'm' must be a finite number", ""),
    ("spat", "--n", "inf", "field 'n' must be a finite number", ""),
    ("trades", "--beta", "inf", "field 'beta' must be a finite number", ""),
    ("spat", "--cosine-scale", "inf", "field 'cosine_scale' must be a finite number", ""),
]


@pytest.mark.parametrize(("method", "flag", "value", "expected", "reason"), KNOB_CASES,
                         ids=[f"{m}{f}={v}" for m, f, v, *_ in KNOB_CASES])
def test_method_knob_out_of_range_is_one_line(tmp_path: Path, capsys, method: str, flag: str,
                                              value: str, expected: str, reason: str) -> None:
    out = tmp_path / "runs"
    code, err = run_cli(capsys, ["train", "--method", method, flag, value, "--out-dir", str(out),
                                 *TINY_ARGS, "--no-progress"])
    assert_one_line_refusal(code, err, expected, reason, f"got {float(value)}"
                            if reason else "")
    assert not out.exists()


def test_method_knob_out_of_range_in_a_config_file(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('method = "spat"\nm = -100\n')
    code, err = run_cli(capsys, ["train", "--config", str(cfg), "--out-dir",
                                 str(tmp_path / "runs")])
    assert_one_line_refusal(code, err, "m must be in [0, 1)", "got -100")
    assert not (tmp_path / "runs").exists()


def test_method_knobs_at_the_edges_of_their_ranges_train(tmp_path: Path, capsys) -> None:
    out = tmp_path / "runs"
    code, err = run_cli(capsys, ["train", "--method", "spat", "--m", "0", "--n", "0", "--beta",
                                 "0", "--cosine-scale", "0.5", "--out-dir", str(out),
                                 "--name", "edge", *TINY_ARGS, "--no-progress"])
    assert code == 0, err
    rec = json.loads((out / "edge" / "config.json").read_text())
    assert (rec["m"], rec["n"], rec["beta"], rec["cosine_scale"]) == (0.0, 0.0, 0.0, 0.5)


def test_each_knob_range_is_declared_once() -> None:
    """Every method's m/n uses the one declared range (MART's β is its λ, with λ's reason), and
    the API refuses what the command line refuses."""
    from spat.methods import METHODS, build_method, knob_range
    from spat.methods.mart import LAMBDA_RANGE
    from spat.methods.spat import BETA_RANGE, M_RANGE, N_RANGE
    from spat.models.heads import COSINE_SCALE, CosineLinear

    for key, declared in (("m", M_RANGE), ("n", N_RANGE)):
        owners = [cls for cls in METHODS.values() if cls.takes(key)]
        assert owners and all(cls.knob_range(key) is declared for cls in owners)
    assert knob_range("beta", "spat") is BETA_RANGE and knob_range("beta", "mart") is LAMBDA_RANGE
    assert knob_range("n", "pgd_at") is N_RANGE  # a knob pgd_at lacks: still checked
    assert 0.0 in M_RANGE and 0.999 in M_RANGE and 1.0 not in M_RANGE
    assert -1e-9 not in M_RANGE and float("nan") not in M_RANGE and True not in M_RANGE
    assert 0.0 in N_RANGE and 1e6 in N_RANGE and float("inf") not in N_RANGE
    assert 0.0 not in COSINE_SCALE and 1e-3 in COSINE_SCALE
    for name, kwargs in (("spat", {"m": 1.0}), ("mart", {"beta": -1.0}),
                         ("pgd_at", {"m": -0.1}), ("trades", {"n": -0.5})):
        with pytest.raises(SpatError, match="must be"):
            build_method(name, **kwargs)
    with pytest.raises(SpatError, match="cosine scale must be > 0"):
        CosineLinear(4, 3, scale=-1.0)


def _npz_with_labels(path: Path, y_train: np.ndarray, **extra: np.ndarray) -> Path:
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.integers(0, 256, (len(y_train), 8, 8), dtype=np.uint8),
             y_train=y_train, x_test=rng.integers(0, 256, (16, 8, 8), dtype=np.uint8),
             y_test=np.arange(16) % 3, **extra)
    return path


def _labels_with(first: int, dtype: Any = np.int64) -> np.ndarray:
    y = (np.arange(48) % 3).astype(dtype)
    y[0] = first
    return y


NPZ_LABEL_CASES = [
    ("int32-max", _labels_with(2**31 - 1), {}, "y_train has label 2147483647"),
    ("uint64-max", _labels_with(2**64 - 1, np.uint64), {}, "at most 10000 classes"),
    ("at-max-classes", _labels_with(10_000), {}, "y_train has label 10000"),
    ("sparse", _labels_with(100), {}, "label 100 makes 101 classes"),
    ("negative", _labels_with(-1), {}, "negative label -1"),
    ("too-many-names", np.arange(48) % 3, {"class_names": np.array(["c"] * 10_001)},
     "class_names has 10001 names"),
]


@pytest.mark.parametrize(("labels", "extra", "message"),
                         [c[1:] for c in NPZ_LABEL_CASES], ids=[c[0] for c in NPZ_LABEL_CASES])
def test_npz_labels_are_checked_before_classes_are_made(tmp_path: Path, capsys,
                                                        labels: np.ndarray, extra: dict,
                                                        message: str) -> None:
    data = _npz_with_labels(tmp_path / "d.npz", labels, **extra)
    out = tmp_path / "runs"
    code, err = run_cli(capsys, ["train", "--dataset", "npz", "--data-dir", str(data),
                                 "--model", "small_cnn", "--out-dir", str(out), *TINY_ARGS,
                                 "--val-size", "8", "--no-progress"])
    assert_one_line_refusal(code, err, message)
    assert not out.exists()


def test_npz_dense_labels_up_to_the_example_count_load(tmp_path: Path) -> None:
    from spat.data.npz import load_npz

    y = np.arange(48) % 3
    y[0] = 63  # 64 labelled examples (48 + 16): K = 64 is allowed, every id could occur
    raw = load_npz(_npz_with_labels(tmp_path / "d.npz", y))
    assert len(raw.class_names) == 64


# one abbreviation of a long option per subcommand: each used to be taken as the full option
ABBREVIATIONS = [
    ["train", "--epoch", "3"],
    ["train", "--cosine", "4"],
    ["eval", "RUN", "--n-ex", "16"],
    ["analyze", "RUN", "--max-ex", "16"],
    ["compare", "RUN", "RUN", "--max-ex", "16"],
    ["export", "RUN", "--form", "robustbench"],
    ["study", "study.toml", "--dry"],
    ["--vers"],
]


@pytest.mark.parametrize("argv", ABBREVIATIONS, ids=[" ".join(a) for a in ABBREVIATIONS])
def test_abbreviated_long_options_are_refused(tmp_path: Path, capsys, argv: list[str]) -> None:
    argv = [str(tmp_path / "run") if a == "RUN" else a for a in argv]
    abbreviation = next(a for a in argv if a.startswith("--"))
    code, err = run_cli(capsys, argv)
    assert_one_line_refusal(code, err, f"unrecognized arguments: {abbreviation}")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(("argv", "hint"), [
    (["train", "--epoch", "3"], "(did you mean --epochs?)"),
    (["eval", "RUN", "--atacks", "pgd20"], "(did you mean --attacks?)"),
])
def test_a_misspelled_option_names_the_close_one(tmp_path: Path, capsys, argv: list[str],
                                                 hint: str) -> None:
    argv = [str(tmp_path / "run") if a == "RUN" else a for a in argv]
    code, err = run_cli(capsys, argv)
    assert_one_line_refusal(code, err, hint)
    code, err = run_cli(capsys, ["train", "--zzz"])
    assert_one_line_refusal(code, err, "unrecognized arguments: --zzz")
    assert "did you mean" not in err
