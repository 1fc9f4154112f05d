"""The public API's type hints are shipped (PEP 561 ``py.typed``) and consistent: mypy on
``spat/api.py`` and ``spat/__init__.py`` (imports followed silently) finds no error."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "spat"


def test_py_typed_is_shipped():
    assert (PACKAGE / "py.typed").is_file()
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert "py.typed" in config["tool"]["setuptools"]["package-data"]["spat"]


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None,
                    reason="mypy is not installed (pip install -e '.[test]' installs it)")
def test_mypy_finds_no_error_in_the_public_api(tmp_path: Path):
    cmd = [sys.executable, "-m", "mypy", str(PACKAGE / "api.py"), str(PACKAGE / "__init__.py"),
           "--ignore-missing-imports", "--follow-imports=silent", "--cache-dir",
           str(tmp_path / "cache")]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Success: no issues found in 2 source files" in res.stdout
