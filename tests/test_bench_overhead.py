"""bench/overhead.py --quick runs end to end and ends with its figure line (how fast is not checked here)."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.timeout(480)
def test_overhead_bench_quick():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "overhead.py"), "--quick"], cwd=ROOT,
                          capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"overhead_s_per_trial=-?\d+(\.\d+)? goal<=1", last), last
    assert re.search(r"^ray_train_overhead_s_per_trial=\d+(\.\d+)?$", proc.stdout, re.M), proc.stdout[-2000:]
