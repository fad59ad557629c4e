"""Kill the search driver with SIGKILL mid-search, resume it, and lose nothing.

The search runs in its own process group (driver and the Ray processes it started), which the
test kills outright, as a crashed laptop or a killed job would, then stops every stray by PID.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pandas as pd

from tests.conftest import ROOT

FINISHED_WORDS = ("completed", "stopped by ASHA")


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _strays(pgid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=,pgid=", "-A"], capture_output=True, text=True).stdout.split("\n")
    return [int(p) for p, g in (ln.split() for ln in out if ln.strip()) if int(g) == pgid]


def _iterations(trial_dir) -> int:
    return sum(1 for _ in open(os.path.join(trial_dir, "result.json")))


def test_sigkill_then_resume_runs_each_trial_once(tmp_path):
    storage, name = tmp_path / "res", "resume"
    cmd = [sys.executable, "-m", "search.run", str(ROOT / "spaces" / "smoke.yaml"), "--storage", str(storage),
           "--name", name, "--set", "search.num_samples=4"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    finished, lines, deadline = 0, [], time.time() + 300
    try:
        for line in proc.stdout:
            lines.append(line)
            finished += any(w in line for w in FINISHED_WORDS)
            if finished >= 2 or time.time() > deadline:
                break
        assert finished >= 2, "".join(lines)
    finally:
        _kill_group(proc.pid)
        proc.wait(timeout=60)
        time.sleep(2)
        for pid in _strays(proc.pid):  # Ray's agents may outlive the group kill: stop them by PID
            os.kill(pid, signal.SIGKILL)
    exp = storage / name
    before = pd.read_csv(exp / "split.csv")
    from ray import tune

    # what the driver had recorded as finished when it died (its last experiment snapshot)
    done_before = {t.trial_id: _iterations(t.path) for t in tune.ExperimentAnalysis(str(exp)).trials
                   if t.status == "TERMINATED"}
    assert done_before, "".join(lines)

    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "add --resume to continue it" in again.stderr  # said, not silently redone

    resumed = subprocess.run(cmd + ["--resume"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming:" in resumed.stdout
    trials = pd.read_csv(exp / "trials.csv")
    assert len(trials) == 4 and set(trials["status"]) <= {"completed", "stopped"}
    for trial_id, n in done_before.items():  # finished trials did not run again
        assert _iterations(exp / f"trial_{trial_id}") == n, trial_id
    assert pd.read_csv(exp / "split.csv").equals(before)  # the same split, not a new one

    from ray.tune.search.optuna import OptunaSearch

    searcher = OptunaSearch()
    searcher.restore_from_dir(str(exp))
    study_trials = searcher._ot_study.trials
    assert len(study_trials) == 4  # the resumed sampler kept the earlier trials
    assert {round(t.params["lr"], 12) for t in study_trials} == {round(x, 12) for x in trials["lr"]}
    assert not _strays(proc.pid)


def test_ctrl_c_stops_cleanly_and_says_how_to_resume(tmp_path):
    cmd = [sys.executable, "-m", "search.run", str(ROOT / "spaces" / "smoke.yaml"), "--storage",
           str(tmp_path / "res"), "--name", "ctrlc"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if " epoch 1/" in line:
                proc.send_signal(signal.SIGINT)  # what Ctrl-C sends to the driver
                break
        lines += proc.stdout.readlines()
        assert proc.wait(timeout=120) == 130, "".join(lines)
    finally:
        _kill_group(proc.pid)
        for pid in _strays(proc.pid):
            os.kill(pid, signal.SIGKILL)
    out = "".join(lines)
    assert "search interrupted" in out and "--name ctrlc --resume" in out
    trials = pd.read_csv(tmp_path / "res" / "ctrlc" / "trials.csv")  # the results so far are written
    assert "unfinished" in set(trials["status"])
