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
import pytest

from tests.conftest import ROOT, kill_group, search_cli


def _strays(pgid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=,pgid=", "-A"], capture_output=True, text=True).stdout.split("\n")
    return [int(p) for p, g in (ln.split() for ln in out if ln.strip()) if int(g) == pgid]


def _iterations(trial_dir) -> int:
    return sum(1 for _ in open(os.path.join(trial_dir, "result.json")))


def _recorded_done(exp) -> dict[str, int]:
    """Trials the driver's last experiment snapshot records as finished, with their reports."""
    from search import tune_files

    try:
        trials = tune_files.read_trials(exp)
    except Exception:  # no snapshot yet, or one being written
        return {}
    return {t.trial_id: _iterations(t.path) for t in trials if t.status == "TERMINATED"}


TRIALS = 6


@pytest.mark.timeout(900)
def test_sigkill_then_resume_runs_each_trial_once(tmp_path):
    storage, name = tmp_path / "res", "resume"
    exp = storage / name
    cmd = [sys.executable, "-m", "search.run", str(ROOT / "spaces" / "smoke.yaml"), "--storage", str(storage),
           "--name", name, "--set", f"search.num_samples={TRIALS}", "--set", "data.limit_per_class=60"]
    log = open(tmp_path / "search.log", "w")  # a file, not a pipe: nothing blocks while the test polls
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.time() + 300
    try:  # killed once the driver's snapshot records a finished trial (trials take seconds)
        while time.time() < deadline and proc.poll() is None and not _recorded_done(exp):
            time.sleep(0.2)
        assert proc.poll() is None, "the search ended before it could be killed:\n" + open(log.name).read()
    finally:
        kill_group(proc.pid)
        proc.wait(timeout=60)
        time.sleep(2)
        for pid in _strays(proc.pid):  # Ray's agents may outlive the group kill: stop them by PID
            os.kill(pid, signal.SIGKILL)
    before = pd.read_csv(exp / "split.csv")
    done_before = _recorded_done(exp)  # what the driver had recorded as finished when it died
    assert done_before, open(log.name).read()

    again = search_cli(cmd[3:], timeout=300)
    assert again.returncode == 2 and "add --resume to continue it" in again.stderr  # said, not silently redone

    # a resumed search keeps the settings it started with, and says those, not the command line's
    resumed = search_cli(cmd[3:] + ["--set", "search.num_samples=99", "--resume"], timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming:" in resumed.stdout and f"; {TRIALS} trials, up to " in resumed.stdout, resumed.stdout
    trials = pd.read_csv(exp / "trials.csv")
    assert len(trials) == TRIALS and set(trials["status"]) <= {"completed", "stopped"}
    for trial_id, n in done_before.items():  # finished trials did not run again
        assert _iterations(exp / f"trial_{trial_id}") == n, trial_id
    assert pd.read_csv(exp / "split.csv").equals(before)  # the same split, not a new one

    # the resumed search went on writing the same live study: every trial in it, once, finished
    from optuna.trial import TrialState

    from search import study as study_mod

    study = study_mod.load(exp, {"name": name})
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert sorted(t.user_attrs["trial_id"] for t in finished) == sorted(trials["trial_id"])
    assert {round(t.params["lr"], 12) for t in finished} == {round(x, 12) for x in trials["lr"]}
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
        kill_group(proc.pid)
        for pid in _strays(proc.pid):
            os.kill(pid, signal.SIGKILL)
    out = "".join(lines)
    assert "search interrupted" in out and "--name ctrlc --resume" in out
    trials = pd.read_csv(tmp_path / "res" / "ctrlc" / "trials.csv")  # the results so far are written
    assert "unfinished" in set(trials["status"])


@pytest.mark.timeout(300)
def test_sigterm_stops_like_ctrl_c_and_leaves_no_ray_process(tmp_path):
    """SIGTERM (timeout, systemd, Kubernetes, SLURM) to a search whose trial runs as a TorchTrainer
    (the runtime whose worker and queue actor used to outlive the search)."""
    cmd = [sys.executable, "-m", "search.run", str(ROOT / "spaces" / "smoke.yaml"), "--storage",
           str(tmp_path / "res"), "--name", "term", "--set", "resources.use_ray_train=true",
           "--set", "search.num_samples=2", "--set", "space.epochs=20", "--set", "search.scheduler.max_t=20"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines, strays = [], []
    try:
        for line in proc.stdout:  # pytest-timeout bounds this read
            lines.append(line)
            if " epoch 2/" in line:
                proc.send_signal(signal.SIGTERM)
                break
        lines += proc.stdout.readlines()
        code = proc.wait(timeout=120)
        time.sleep(3)
        strays = _strays(proc.pid)
    finally:
        kill_group(proc.pid)
        for pid in _strays(proc.pid):
            os.kill(pid, signal.SIGKILL)
    out = "".join(lines)
    assert code == 130, out
    assert "search interrupted" in out and "--name term --resume" in out
    assert "Ray dashboard: http://127.0.0.1:" in out
    assert "unfinished" in set(pd.read_csv(tmp_path / "res" / "term" / "trials.csv")["status"])
    assert not strays, subprocess.run(["ps", "-o", "pid,args", "-p", ",".join(map(str, strays))],
                                      capture_output=True, text=True).stdout


def test_the_printed_resume_command_joins_the_same_cluster_and_data():
    """Printed when a search is interrupted: on a cluster, without --address the resume would start a
    Ray of its own on the head; without --data it would prepare the space's default data first."""
    import argparse

    from search.run import resume_command

    args = argparse.Namespace(space="spaces/finetune.yaml", storage="s3://my-bucket/hpo", address="auto",
                              data="s3://my-bucket/my images/")
    assert resume_command(args, "finetune") == (
        "python -m search.run spaces/finetune.yaml --storage s3://my-bucket/hpo --name finetune --address auto "
        "--data 's3://my-bucket/my images/' --resume")
    local = argparse.Namespace(space="spaces/smoke.yaml", storage="results", address=None, data=None)
    assert resume_command(local, "smoke") == ("python -m search.run spaces/smoke.yaml --storage results --name smoke "
                                              "--resume")
