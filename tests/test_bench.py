"""The bench/ scripts run in --quick mode and end with their `ratio=X goal...` line.

Only that they work is checked here, not how fast: figures belong to the scripts' full runs."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.parametrize("script, goal", [
    ("data.py", r"goal>=3"),
    ("throughput.py", r"goal>=0\.9"),
    ("asha.py", r"goal<=0\.33"),
    ("final_model.py", r"goal>=1"),
    ("footprint.py", r"goal<=0\.02"),
])  # left out: bench/warm_start.py --quick (two searches, a minute; tests/test_live_study.py warm-starts) and
# bench/constraints.py --quick (a search; tests/test_deployment.py runs a constrained one) and
# bench/object_storage.py (three searches and an S3 server; tests/test_multinode.py searches a bucket) and
# bench/retrain_parallel.py --quick (a search and two retrains, over a minute; tests/test_retrain_parallel.py
# runs both of its paths)
def test_quick_run_prints_its_ratio_last(script, goal, tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--quick"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    last = r.stdout.strip().splitlines()[-1]
    assert re.fullmatch(rf"ratio=(\d+\.\d+|inf) {goal}", last), last
