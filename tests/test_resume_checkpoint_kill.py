"""The driver SIGKILLed while a trial is writing a checkpoint into the results folder; `--resume`
then goes on with nothing lost: every epoch reported before the kill is still in result.json and
in the study, the interrupted trial continues from its last whole checkpoint, no half-written
checkpoint is left as one, and the search finishes.

"While writing a checkpoint" holds by construction, not by timing:
1. the trial waits before its epoch 2 at a gate (HPO_TEST_HOLD_DIR, trainables/trial/train_loop._test_hold),
   its epoch 1 reported with a checkpoint;
2. the test waits until Tune's saved snapshot has that report, whole (what --resume restores);
3. it puts a named pipe where the trial's next checkpoint will put train_state.pt: opening a pipe
   for writing blocks until someone reads it, and nobody does;
4. it opens the gate: the trial trains epoch 2 and Tune starts copying its checkpoint into the
   results folder; meta.json and model.pt arrive, train_state.pt never can;
5. once they are there, the test SIGKILLs the driver's process group (the driver, the Ray it
   started, the trial in the middle of its write), as a crashed machine or a killed job would.
The pipe is then replaced by what a write killed at that point leaves: an empty train_state.pt.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest

from tests.conftest import ROOT, folder_snapshot, search_cli, stop_group, wait_until
from trainables.ray_internals import CHECKPOINT_DIR_NAME, CHECKPOINT_PREFIX
from trainables.trial import checkpoint
from trainables.trial.train_loop import TEST_HOLD_DIR

GATE = "epoch-2"


def _epoch_one_saved(exp) -> tuple[str, str] | None:
    """(trial folder, its checkpoint) once Tune's snapshot has a running trial's epoch-1 report,
    whole (`tests.conftest.tune_snapshot`): what --resume reads, unchanged until the kill."""
    saved = folder_snapshot(exp) or {}
    return next(((trial, t["last"][CHECKPOINT_DIR_NAME]) for trial, t in saved.items()
                 if t["status"] != "TERMINATED" and t["last"].get("epoch") == 1), None)


def _next_checkpoint(name: str) -> str:
    """Tune's name for the checkpoint after NAME (checkpoint_000000 -> checkpoint_000001)."""
    return f"{CHECKPOINT_PREFIX}{int(name[len(CHECKPOINT_PREFIX):]) + 1:06d}"


def _reports(trial_dir) -> list[tuple[int, float]]:
    from search import tune_files

    rows = tune_files.read_reports(trial_dir)
    return list(zip(rows["epoch"], rows["val_acc"]))


@pytest.mark.timeout(900)
def test_sigkill_during_a_checkpoint_write_then_resume_loses_nothing(tmp_path):
    storage, name = tmp_path / "res", "ckpt"
    exp = storage / name
    args = [str(ROOT / "spaces" / "smoke.yaml"), "--storage", str(storage), "--name", name,
            "--set", "search.num_samples=2"]  # one at a time: lr=0.003 (3 epochs), then lr=1e-6 (ASHA stops it)
    hold = tmp_path / "hold"
    hold.mkdir()
    (hold / GATE).touch()
    log = open(tmp_path / "search.log", "w")  # a file, not a pipe: nothing blocks while the test polls
    proc = subprocess.Popen([sys.executable, "-m", "search.run", *args], cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env=dict(os.environ, **{TEST_HOLD_DIR: str(hold)}))
    try:
        said = lambda: open(log.name).read()  # noqa: E731
        found = wait_until(lambda: _epoch_one_saved(exp) or proc.poll() is not None, 300,
                           lambda: "Tune's saved state never had a trial's epoch 1:\n" + said())
        assert proc.poll() is None, "the search ended at the gate:\n" + said()
        trial, last = found
        writing = exp / trial / _next_checkpoint(last)
        writing.mkdir()
        os.mkfifo(writing / checkpoint.TRAIN_STATE)  # the write of epoch 2's checkpoint blocks here
        (hold / GATE).unlink()
        wait_until(lambda: proc.poll() is not None or all((writing / f).exists() for f in
                                                          (checkpoint.WEIGHTS, checkpoint.META)), 300,
                   lambda: f"the checkpoint write into {writing} never began:\n" + said())
        assert proc.poll() is None, "the search ended before the kill:\n" + said()
    finally:
        # SIGKILL the driver first (its Ray dying first would let it see the trial fail and record
        # that), then the Ray it started and the trial in the middle of its checkpoint write
        proc.kill()
        proc.wait(timeout=60)
        stop_group(proc.pid)
        log.close()
    (writing / checkpoint.TRAIN_STATE).unlink()
    (writing / checkpoint.TRAIN_STATE).touch()  # what a write killed after its open() leaves
    before = _reports(exp / trial)
    assert [e for e, _ in before] == [1], before  # epoch 2's report never reached the driver

    resumed = search_cli([*args, "--resume"], timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming:" in resumed.stdout, resumed.stdout
    trials = pd.read_csv(exp / "trials.csv")
    assert len(trials) == 2 and set(trials["status"]) <= {"completed", "stopped"}, trials
    # the interrupted trial: what it reported before the kill is kept, each epoch once, in order
    after = _reports(exp / trial)
    assert after[:1] == before and [e for e, _ in after] == [1, 2, 3], after
    # every checkpoint left in its folder is whole, and says the epoch its train state is at
    kept = sorted(d for d in (exp / trial).iterdir() if d.name.startswith(CHECKPOINT_PREFIX))
    assert kept and writing in kept
    for d in kept:
        model, meta = checkpoint.load(d)
        assert checkpoint.load_train_state(d)["epoch"] == meta["epoch"], d

    # the study has every epoch of both trials, once; both finished
    from optuna.trial import TrialState

    from search import study as study_mod

    study = study_mod.load(exp, name)
    by_id = {t.user_attrs["trial_id"]: t for t in study.trials}
    assert sorted(by_id) == sorted(trials["trial_id"])
    for _, row in trials.iterrows():
        t = by_id[row["trial_id"]]
        assert t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        assert sorted(t.intermediate_values) == list(range(1, row["epochs_run"] + 1)), (row["trial_id"], t)
    assert sorted(by_id[trial.removeprefix("trial_")].intermediate_values) == [1, 2, 3]
