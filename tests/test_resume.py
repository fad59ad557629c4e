"""Kill the search driver with SIGKILL mid-search, resume it, and lose nothing.

The search runs in its own process group (driver and the Ray processes it started), which the
test kills outright, as a crashed laptop or a killed job would, then stops every stray by PID.
Where a test needs a search still running, a trial waits at a gate the test opens
(HPO_TEST_HOLD_DIR, see trainables/trial/train_loop._test_hold): not a hope that the machine is slow.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from tests.conftest import (
    ROOT,
    folder_snapshot,
    group_pids,
    kill_group,
    search_cli,
    session_ray_processes,
    stop_group,
    wait_until,
)
from trainables.trial.train_loop import TEST_HOLD_DIR


def _strays(pgid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=,pgid=", "-A"], capture_output=True, text=True).stdout.split("\n")
    return [int(p) for p, g in (ln.split() for ln in out if ln.strip()) if int(g) == pgid]


def _left_behind(pgid: int, ray_before: set[int], timeout: float = 60) -> list[int]:
    """The processes a search that has exited leaves running: its process group, and the Ray
    processes of this test session that were not running before it (Ray's workers leave the
    group). Those it stopped may take a moment to exit: [] as soon as all are gone, else what is
    still there after TIMEOUT seconds."""
    deadline = time.time() + timeout
    while (left := sorted(set(group_pids(pgid)) | (session_ray_processes() - ray_before))) and time.time() < deadline:
        time.sleep(0.2)
    return left


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


def _finished_and_held(exp) -> bool:
    """Whether Tune's snapshot in EXP is whole and has a finished trial and one that reported its
    epoch 1: the trial at the gate, after which nothing in it changes until the kill."""
    saved = (folder_snapshot(exp) or {}).values()
    return any(t["status"] == "TERMINATED" for t in saved) and \
        any(t["status"] != "TERMINATED" and t["last"].get("epoch") == 1 for t in saved)


TRIALS = 6
# One trial at a time (the smoke space's setting). The first runs one epoch and finishes; the
# second runs three and waits before its second while the gate HOLD stands: the search cannot end
# before the test kills it. ASHA stops no trial here (grace = max_t), so none ends before the gate.
HOLD = "epoch-2"
SETTINGS = ["--set", f"search.num_samples={TRIALS}", "--set", "data.limit_per_class=60",
            "--set", "space.epochs={choice: [1, 3]}", "--set", "search.scheduler.grace_period=3",
            "--set", "search.points_to_evaluate=[{lr: 0.003, epochs: 1}, {lr: 0.001, epochs: 3}]"]


@pytest.mark.timeout(900)
def test_sigkill_then_resume_runs_each_trial_once(tmp_path):
    storage, name = tmp_path / "res", "resume"
    exp = storage / name
    cmd = [sys.executable, "-m", "search.run", str(ROOT / "spaces" / "smoke.yaml"), "--storage", str(storage),
           "--name", name, *SETTINGS]
    hold = tmp_path / "hold"
    hold.mkdir()
    (hold / HOLD).touch()
    log = open(tmp_path / "search.log", "w")  # a file, not a pipe: nothing blocks while the test polls
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env=dict(os.environ, **{TEST_HOLD_DIR: str(hold)}))
    try:  # killed once Tune's snapshot has the finished trial and the next one's epoch 1, whole
        wait_until(lambda: proc.poll() is not None or _finished_and_held(exp), 300,
                   lambda: "no whole snapshot had a finished trial and one held at the gate:\n" + open(log.name).read())
        assert proc.poll() is None, "the search ended before it could be killed:\n" + open(log.name).read()
    finally:
        # SIGKILL the driver first (its Ray dying first would let it see trials fail and record
        # that), then the Ray it started, and any Ray agent forked while the kill ran
        proc.kill()
        proc.wait(timeout=60)
        stop_group(proc.pid)
        (hold / HOLD).unlink()
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

    study = study_mod.load(exp, name)
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert sorted(t.user_attrs["trial_id"] for t in finished) == sorted(trials["trial_id"])
    assert {round(t.params["lr"], 12) for t in finished} == {round(x, 12) for x in trials["lr"]}
    assert not _strays(proc.pid)


def _gated(tmp_path, epoch: int) -> dict:
    """The environment of a search whose trials wait before EPOCH (a gate never opened): a signal
    sent once a trial has reported an earlier epoch finds the search still running."""
    hold = tmp_path / "hold"
    hold.mkdir()
    (hold / f"epoch-{epoch}").touch()
    return dict(os.environ, **{TEST_HOLD_DIR: str(hold)})


@pytest.mark.timeout(300)
def test_ctrl_c_stops_cleanly_and_says_how_to_resume(tmp_path):
    cmd = [sys.executable, "-m", "search.run", str(ROOT / "spaces" / "smoke.yaml"), "--storage",
           str(tmp_path / "res"), "--name", "ctrlc"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env=_gated(tmp_path, 2))
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
    ray_before = session_ray_processes()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env=_gated(tmp_path, 3))
    lines, strays = [], []
    try:
        for line in proc.stdout:  # pytest-timeout bounds this read
            lines.append(line)
            if " epoch 2/" in line:
                proc.send_signal(signal.SIGTERM)
                break
        lines += proc.stdout.readlines()
        code = proc.wait(timeout=120)
        strays = _left_behind(proc.pid, ray_before)
    finally:
        kill_group(proc.pid)
        for pid in {*_strays(proc.pid), *(session_ray_processes() - ray_before)}:
            with contextlib.suppress(ProcessLookupError):
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
    Ray of its own on the head; without --data it would prepare the space's default data first; without
    its --set changes it would continue another search (other concurrency, other data limits)."""
    import argparse

    from search.cli import resume_command

    args = argparse.Namespace(space="spaces/finetune.yaml", storage="s3://my-bucket/hpo", address="auto",
                              data="s3://my-bucket/my images/", overrides=["search.max_concurrent_trials=4"])
    assert resume_command(args, "finetune") == (
        "python -m search.run spaces/finetune.yaml --set search.max_concurrent_trials=4 --storage s3://my-bucket/hpo "
        "--name finetune --address auto --data 's3://my-bucket/my images/' --resume")
    local = argparse.Namespace(space="spaces/smoke.yaml", storage="results", address=None, data=None, overrides=[])
    assert resume_command(local, "smoke") == ("python -m search.run spaces/smoke.yaml --storage results --name smoke "
                                              "--resume")
