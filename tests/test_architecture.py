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


@pytest.mark.timeout(320)
def test_a_reverse_import_breaks_the_layers_contract(tmp_path):
    """The contract can fail: a copy of the code where trainables imports analysis, inside a
    function as the old code did, is refused, naming the import."""
    for name in ("trainables", "search", "analysis"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "assets"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    metrics = tmp_path / "trainables" / "trial" / "metrics.py"
    metrics.write_text(metrics.read_text() + "\n\ndef _ranked(results_dir):\n    from analysis import rank\n\n"
                       "    return rank\n")
    out = _lint_imports(tmp_path)
    assert out.returncode != 0
    assert "BROKEN" in out.stdout and "trainables.trial.metrics -> analysis.rank" in out.stdout, out.stdout[-3000:]


@pytest.mark.timeout(320)
def test_a_model_that_imports_the_trial_breaks_the_sub_package_contract(tmp_path):
    """Inside trainables too: a copy where a model module imports the train loop is refused."""
    for name in ("trainables", "search", "analysis"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "assets"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    registry = tmp_path / "trainables" / "models" / "registry.py"
    registry.write_text(registry.read_text() + "\n\ndef _loop():\n    from trainables.trial import train_loop\n\n"
                        "    return train_loop\n")
    out = _lint_imports(tmp_path)
    assert out.returncode != 0
    assert "trainables.models.registry -> trainables.trial.train_loop" in out.stdout, out.stdout[-3000:]


@pytest.mark.timeout(120)
def test_ruff_finds_nothing():
    out = subprocess.run([str(BIN / "ruff"), "check", "."], cwd=ROOT, capture_output=True, text=True, timeout=100)
    assert out.returncode == 0, out.stdout[-3000:]
