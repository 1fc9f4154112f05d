"""``benchmarks/gpu_check.sh``, the GPU check of issue 23: its CPU-safe part (arguments,
``--dry-run``) runs here, so the script cannot rot unseen while no GPU is at hand. The dry run
lists every step's command; each command must still parse (bench.py's and ``spat train``'s own
argument parsers) and fit the 8-minute budget."""

from __future__ import annotations

import importlib.util
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from spat.cli import build_parser
from tests.conftest import REPO

SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
STEPS = ["cuda_tests", "calibration", "bench_preact", "bench_wrn", "autoattack", "train"]

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")


def _run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                          cwd=cwd, timeout=60, check=False)


def _bench():
    spec = importlib.util.spec_from_file_location("_bench_gpu_check", REPO / "benchmarks" /
                                                  "bench.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_dry_run_lists_every_step_and_their_commands_parse(tmp_path: Path) -> None:
    out = tmp_path / "report"
    res = _run("--dry-run", "--out", str(out))
    assert res.returncode == 0, res.stderr
    lines = [ln for ln in res.stdout.splitlines() if ln.split(" ", 1)[0] in STEPS]
    assert [ln.split()[0] for ln in lines] == STEPS
    total = sum(int(ln.split()[1].rstrip("s")) for ln in lines)
    assert total <= 480 and f"add up to {total} s" in res.stdout
    assert not out.exists()  # a dry run writes nothing
    bench, spat = _bench(), build_parser()
    for ln in lines:
        name, _, *cmd = shlex.split(ln)
        if "benchmarks/bench.py" in cmd:
            args = bench.parse_args(cmd[cmd.index("benchmarks/bench.py") + 1:])
            assert args.device == "cuda" and not args.write and args.json
        elif cmd[1:3] == ["-m", "spat"]:
            args = spat.parse_args(cmd[3:])
            assert args.command == "train" and args.device == "cuda"
        else:  # pytest: the named test files exist
            assert cmd[1:3] == ["-m", "pytest"], ln
            files = [c.split("::")[0] for c in cmd if c.startswith("tests/")]
            assert files and all((REPO / f).is_file() for f in files), ln


@pytest.mark.parametrize("args, message", [
    (["--device", "cpu"], "--device must be cuda or cuda:N, got 'cpu'"),
    (["--steps", "bench_wrn,nope"], "unknown step 'nope'"),
    (["--bogus"], "unknown argument '--bogus'"),
    (["--out"], "--out needs a folder"),
])
def test_bad_arguments_are_one_line_errors(args: list[str], message: str,
                                           tmp_path: Path) -> None:
    res = _run(*args, "--dry-run", cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.startswith("gpu_check.sh: error: ")
    assert message in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_help_and_a_chosen_subset_of_steps(tmp_path: Path) -> None:
    res = _run("--help")
    assert res.returncode == 0 and "--dry-run" in res.stdout and "bench_wrn" in res.stdout
    res = _run("--dry-run", "--steps", "train,bench_preact", "--device", "cuda:1")
    assert res.returncode == 0, res.stderr
    listed = [ln.split()[0] for ln in res.stdout.splitlines() if ln.split(" ", 1)[0] in STEPS]
    assert listed == ["train", "bench_preact"] and "--device cuda:1" in res.stdout
