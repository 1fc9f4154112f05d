"""examples/ run as a user runs them: a fresh process, in an empty folder, one thread."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_notebook_tour_runs_and_prints_each_section(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(EXAMPLES / "notebook_tour.py"), str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    sections = ["== trained", "== loaded", "== evaluated", "== hard pairs (our model)",
                "== hard pairs (trained run)"]
    assert [out.index(s) for s in sections] == sorted(out.index(s) for s in sections)
    assert "pgd_at on digits, small_cnn" in out and "checkpoint epoch_" in out
    assert "PGD-20" in out and "weight-row similarity vs pair flow: ρ" in out
    assert (tmp_path / "tour" / "summary.json").is_file()  # the run went where it was told
