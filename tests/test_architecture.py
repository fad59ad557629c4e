"""The code's shape, checked by the tools that own each rule: import-linter's contracts in
pyproject.toml (one-way layers, no cycles inside a package) and ruff."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(cwd))  # the packages of CWD, not the installed ones
    return subprocess.run([str(BIN / "lint-imports"), "--no-cache"], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.timeout(320)
def test_the_import_contracts_hold():
    out = _lint_imports(ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "Contracts: 3 kept, 0 broken." in out.stdout


def _lint_a_copy_with(tmp_path: Path, module: str, importing: str) -> subprocess.CompletedProcess:
    """import-linter on a copy of the code where MODULE (a path under the root) imports IMPORTING
    (`from X import Y`) inside a function, as the old code did."""
    for name in ("trainables", "search", "analysis"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "assets"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    path = tmp_path / module
    path.write_text(path.read_text() + f"\n\ndef _reverse():\n    {importing}\n")
    return _lint_imports(tmp_path)


@pytest.mark.timeout(320)
def test_a_reverse_import_breaks_the_layers_contract(tmp_path):
    """The contract can fail: a copy of the code where trainables imports analysis is refused,
    naming the import."""
    out = _lint_a_copy_with(tmp_path, "trainables/trial/metrics.py", "from analysis import rank")
    assert out.returncode != 0
    assert "BROKEN" in out.stdout and "trainables.trial.metrics -> analysis.rank" in out.stdout, out.stdout[-3000:]


@pytest.mark.timeout(320)
def test_a_model_that_imports_the_trial_breaks_the_sub_package_contract(tmp_path):
    """Inside trainables too: a copy where a model module imports the train loop is refused."""
    out = _lint_a_copy_with(tmp_path, "trainables/models/registry.py", "from trainables.trial import train_loop")
    assert out.returncode != 0
    assert "trainables.models.registry -> trainables.trial.train_loop" in out.stdout, out.stdout[-3000:]


@pytest.mark.timeout(120)
def test_ruff_finds_nothing():
    out = subprocess.run([str(BIN / "ruff"), "check", "."], cwd=ROOT, capture_output=True, text=True, timeout=100)
    assert out.returncode == 0, out.stdout[-3000:]
