"""`python -m bench --quick` runs the bench scripts' quick modes and ends each with its `ratio=X goal...` line.

Only that they work is checked here, not how fast: figures belong to the scripts' full runs.
All the quick modes together take about half an hour on a 2-core machine, so a representative
subset runs here, each through the runner: the cache (data), the trial runtime (throughput),
a search per arm (asha), a search and the final model (final_model), and a model measured in
this process (footprint). Left out: warm_start.py (three searches; tests/test_live_study.py
warm-starts), constraints.py (a search; tests/test_deployment.py runs a constrained one),
object_storage.py (four searches and an S3 server; tests/test_multinode.py searches a bucket),
retrain_parallel.py (tests/test_retrain_parallel.py runs both of its paths), overhead.py
(tests/test_bench_overhead.py), and anytime*.py (minutes of replayed and live searches).
"""
from __future__ import annotations

import os
import re
import subprocess

import pytest

from tests.conftest import module_cli


def bench_cli(args: list[str], timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m bench ARGS`; whatever is left of it, and of the scripts it started, is killed by PID."""
    return module_cli("bench", args, timeout, env=env)


@pytest.mark.timeout(480)
@pytest.mark.parametrize("script, goal", [
    ("data", r"goal>=3"),
    ("throughput", r"goal>=0\.9"),
    ("asha", r"goal>=1"),
    ("final_model", r"goal>=1"),
    ("footprint", r"goal<=0\.02"),
])
def test_quick_run_prints_its_ratio_last(script, goal):
    r = bench_cli(["--quick", "--only", script], timeout=450)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    line = re.search(rf"^\[1/1\] {script}\.py: ok in \d+ s: (.*)$", r.stdout, re.M)
    assert line, r.stdout[-3000:]
    assert re.fullmatch(rf"ratio=(\d+\.\d+|inf) {goal}", line.group(1)), line.group(1)
    assert r.stdout.strip().splitlines()[-1] == "1 of 1 quick runs passed", r.stdout[-2000:]


@pytest.mark.timeout(240)
def test_a_failing_script_fails_the_run_and_scripts_without_quick_are_listed(tmp_path):
    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("")  # the image cache cannot be made: footprint.py fails
    r = bench_cli(["--quick", "--only", "footprint", "anytime_table"], timeout=220,
                  env=dict(os.environ, HPO_CACHE_DIR=str(not_a_folder)))
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-2000:]
    assert re.search(r"^\[1/1\] footprint\.py: FAILED in \d+ s: exit status 1; its last lines:", r.stdout, re.M)
    assert re.search(r"its last lines:\n( {4}.*\S.*\n)+0 of 1", r.stdout), r.stdout[-2000:]  # the script's own
    assert r.stdout.strip().splitlines()[-1] == ("0 of 1 quick runs passed; failed: footprint.py; "
                                                 "no --quick: anytime_table.py")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("args, says", [
    (["--quick", "--only", "nope"], "no bench/nope.py; the scripts are anytime, "),
    ([], "give --quick: the full benches run one at a time"),
])
def test_bad_arguments_are_a_one_line_error(args, says):
    r = bench_cli(args, timeout=50)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert says in r.stderr.strip().splitlines()[-1], r.stderr
    assert r.stdout == ""
