"""Faults survived on purpose, in the spirit of Ray's own chaos tests (`test_chaos.py` there):
a search of real trials on a real local Ray cluster goes on while the test breaks what it
stands on, and nothing it reported is lost.

- Trial processes killed (SIGKILL, by PID) one after another mid-trial: the search finishes,
  each killed trial continues from its last checkpoint in a new process (or, killed more often
  than `search.max_failures` allows, ends as an error with its cause in trials.csv), and every
  epoch a trial reported is in its result.json and in the Optuna study.
- The object storage going away mid-search (tests/s3_server.py's switch cuts the S3 server's
  port off and puts it back, the same bucket behind it): the search waits and retries, and the
  bucket holds every trial's results; an outage longer than the stated limit stops the search
  with one line, and `--resume` finishes it.

Every search runs in a process group of its own, killed by PID when the test ends, passed or not.
"""
from __future__ import annotations

import glob
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import ROOT, _with_descendants, kill_group, wait_while_running

SMOKE = str(ROOT / "spaces" / "smoke.yaml")


def _finished(search: subprocess.Popen, log: Path, timeout: float) -> tuple[int, str]:
    """SEARCH's exit code once it ends, and its log."""
    code = search.wait(timeout=timeout)
    return code, log.read_text()


def _with_log(what: str, log: Path):
    """WHAT, and the end of the search's LOG, when a wait fails."""
    return lambda: f"{what}:\n{log.read_text()[-3000:]}"


def _start(args: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    """`python -m search.run ARGS` in a process group of its own, its output into LOG (a file,
    not a pipe: nothing blocks while the test watches)."""
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "search.run", *args], cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True, env=env)


def _stop(proc: subprocess.Popen) -> None:
    kill_group(proc.pid)
    proc.wait(timeout=60)


def _rows(files) -> dict[str, list[dict]]:
    """{trial folder name: its result.json rows} for each of FILES (a row being written is left out)."""
    rows = {}
    for f in map(Path, files):
        try:
            text = f.read_text()
        except OSError:
            continue
        lines = text.split("\n")[:-1]  # up to the last whole line
        rows[f.parent.name] = [json.loads(x) for x in lines if x.strip()]
    return rows


def _staged_rows(search: subprocess.Popen, name: str) -> dict[str, list[dict]]:
    """The rows the search's Tune driver has written so far, in its staging folder (in its own
    Ray session's folder, which is named after the driver's PID)."""
    ray_tmp = os.path.join(os.environ.get("RAY_TMPDIR", "/tmp"), "ray")
    pattern = f"{ray_tmp}/session_*_{search.pid}/artifacts/*/{name}/driver_artifacts/trial_*/result.json"
    return _rows(glob.glob(pattern))


def _trial_processes(search: subprocess.Popen) -> set[int]:
    """The PIDs of this search's Tune trial actors (Ray names their processes `ray::ImplicitFunc`):
    descendants of the search's driver, so never another test's or user's Ray."""
    pids = set()
    for pid in _with_descendants([search.pid]):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if cmd.startswith(b"ray::ImplicitFunc"):
            pids.add(pid)
    return pids


KILLS = 5
DIED = "the trial's process died"  # search.results_folder.classify_failure's line for a killed trial
TRIALS = 12
EPOCHS = 6


def _search_args(storage: Path, name: str, trials: int, max_failures: int) -> list[str]:
    """A small fast space (spaces/smoke.yaml's CNN on 60 images a class) whose trials run all
    their epochs (no ASHA stop), two at a time."""
    return [SMOKE, "--storage", str(storage), "--name", name,
            "--set", f"search.num_samples={trials}", "--set", "search.max_concurrent_trials=2",
            "--set", f"search.max_failures={max_failures}", "--set", f"space.epochs={EPOCHS}",
            "--set", f"search.scheduler.max_t={EPOCHS}", "--set", f"search.scheduler.grace_period={EPOCHS}",
            "--set", "data.limit_per_class=60"]


def _kill_running_trials(search: subprocess.Popen, name: str, log: Path, kills: int, seed: int = 0) -> list:
    """KILLS times: once some trial has reported an epoch since the last kill and has two or more
    epochs left, kill one such trial's process (picked at random) with SIGKILL. Returns
    [(pid, trial folder, its last reported epoch)]."""
    rng = random.Random(seed)
    killed: list[tuple[int, str, int]] = []
    seen = 0  # rows reported when the last kill happened

    def victims():
        rows = _staged_rows(search, name)
        if sum(map(len, rows.values())) <= seen:  # nothing reported since the last kill
            return None
        alive = _trial_processes(search) - {pid for pid, _, _ in killed}
        running = [(rs[-1]["worker_pid"], trial, rs[-1]["epoch"]) for trial, rs in sorted(rows.items())
                   if rs and rs[-1]["epoch"] <= rs[-1]["epoch_of"] - 2 and rs[-1]["worker_pid"] in alive]
        return running or None

    for _ in range(kills):
        running = wait_while_running(search, victims, _with_log("no trial left running to kill", log))
        pid, trial, epoch = rng.choice(running)
        seen = sum(map(len, _staged_rows(search, name).values()))
        os.kill(pid, signal.SIGKILL)
        killed.append((pid, trial, epoch))
    return killed


def _study_trials(exp: Path, name: str) -> dict:
    """{trial folder name: its Optuna trial} of the search's live study (its journal file)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    study = optuna.load_study(study_name=name, storage=JournalStorage(JournalFileBackend(str(exp / "optuna.journal"))))
    return {f"trial_{t.user_attrs['trial_id']}": t for t in study.trials if "trial_id" in t.user_attrs}


def _search_with_kills(tmp_path: Path, name: str, trials: int, max_failures: int, kills: int, timeout: float):
    """Run a search of TRIALS, killing a running trial process KILLS times; it must end with exit 0.
    Its results folder, and the (pid, trial, epoch) of each kill."""
    storage, log = tmp_path / "res", tmp_path / "search.log"
    search = _start(_search_args(storage, name, trials, max_failures=max_failures), log)
    try:
        killed = _kill_running_trials(search, name, log, kills)
        code = search.wait(timeout=timeout)
    finally:
        _stop(search)
    assert code == 0, log.read_text()[-5000:]
    return storage / name, killed


@pytest.mark.timeout(900)
def test_trial_processes_killed_mid_trial_lose_no_reported_epoch(tmp_path):
    """Each killed trial continues from its last checkpoint in a new process (search.max_failures
    allows every kill); the search completes, and every epoch each trial reported is in its
    result.json, in order, and in the Optuna study with the value first reported."""
    from optuna.trial import TrialState

    name = "chaos"
    exp, killed = _search_with_kills(tmp_path, name, TRIALS, max_failures=KILLS, kills=KILLS, timeout=600)
    trials = pd.read_csv(exp / "trials.csv").set_index("trial_id")
    assert len(trials) == TRIALS, trials.to_string()
    for trial_id, t in trials.iterrows():  # completed, or an error that says why
        assert t["status"] == "completed" or (t["status"] == "error" and t["error"].startswith(DIED)), (trial_id, t)

    rows = _rows(exp.glob("trial_*/result.json"))
    assert len(rows) == TRIALS
    kills = {trial: sum(1 for _, t, _ in killed if t == trial) for trial in rows}
    for trial, rs in rows.items():  # every epoch from 1 on, in order
        epochs = [r["epoch"] for r in rs]
        assert epochs == sorted(epochs) and set(epochs) == set(range(1, max(epochs) + 1)), (trial, epochs, killed)
        # twice only an epoch whose report came in just before the kill, before Tune took its
        # checkpoint (Ray 2.60 registers it by a second call to the trial's actor): it is redone
        assert len(epochs) - len(set(epochs)) <= kills[trial], (trial, epochs, killed)
    for pid, trial, epoch in killed:  # it went on in another process, from the epoch after its last report
        assert any(r["worker_pid"] != pid for r in rows[trial] if r["epoch"] > epoch), (trial, rows[trial])

    told = _study_trials(exp, name)
    assert set(told) == set(rows)
    for trial, t in told.items():  # the study has the same epochs, with the value first reported
        first = {}
        for r in rows[trial]:
            first.setdefault(r["epoch"], r["val_acc"])
        assert t.intermediate_values == first, trial
        status = trials.loc[trial[len("trial_"):], "status"]
        assert t.state == (TrialState.COMPLETE if status == "completed" else TrialState.FAIL), trial


@pytest.mark.timeout(600)
def test_a_trial_killed_more_often_than_it_may_fail_is_an_error_with_its_cause(tmp_path):
    """search.max_failures=0: the killed trial ends as an error that says its process died, its
    reported epochs kept; the other trials complete and the search ends normally (exit 0, not
    'interrupted'). Ray 2.60 left such a trial RUNNING in its saved state whenever Tune had saved
    it since the trial's last report (ray_internals.save_stopped_trial_state; tests/test_ray_internals.py
    makes that case every time): this run passes whether or not the kill falls in that window."""
    from optuna.trial import TrialState

    name = "killed"
    exp, [(pid, trial, epoch)] = _search_with_kills(tmp_path, name, 3, max_failures=0, kills=1, timeout=400)
    trials = pd.read_csv(exp / "trials.csv").set_index("trial_id")
    dead = trials.loc[trial[len("trial_"):]]
    assert dead["status"] == "error" and dead["error"].startswith(DIED), dead.to_dict()
    assert Path(dead["error_file"]).is_file()
    assert set(trials.drop(index=trial[len("trial_"):])["status"]) == {"completed"}, trials.to_string()
    rows = _rows(exp.glob("trial_*/result.json"))
    assert [r["epoch"] for r in rows[trial]] == list(range(1, epoch + 1)) or \
        [r["epoch"] for r in rows[trial]] == list(range(1, epoch + 2))  # the epoch in flight may have landed
    t = _study_trials(exp, name)[trial]
    assert t.state == TrialState.FAIL and t.intermediate_values == {r["epoch"]: r["val_acc"] for r in rows[trial]}


# ---- the object storage goes away -------------------------------------------------------------

OUTAGE_S = 20  # how long the storage is away in the test it is survived in


@pytest.mark.timeout(60)
def test_the_bucket_file_system_waits_out_the_limit_also_in_the_processes_it_is_pickled_to(monkeypatch):
    """Ray pickles the search's file system into every trial process, and pyarrow's own pickle of
    an S3 file system drops its retry strategy: the copy must wait as long as the original."""
    import pickle
    import socket

    from trainables.storage import remote

    with socket.socket() as s:  # a port nothing listens on: every connection is refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_EC2_METADATA_DISABLED": "true", remote.OUTAGE_ENV: "3"}.items():
        monkeypatch.setenv(key, value)
    original = remote.storage_filesystem("s3://hpo")
    for f in (original, pickle.loads(pickle.dumps(original))):
        started = time.monotonic()
        with pytest.raises(OSError) as refused:
            f.get_file_info("hpo/results")
        # (a copy of pyarrow's own gives up in under 2 s, the original from its URI after 6 s)
        assert time.monotonic() - started >= 3 and remote.unreachable(str(refused.value)), refused.value


@pytest.fixture
def bucket():
    """The S3 server behind a switch (tests/s3_server.py), with bucket 'hpo'."""
    from tests.s3_server import s3_server

    with s3_server("hpo", switch=True) as server:
        yield server


def _bucket_rows(bucket, prefix: str) -> dict[str, list[dict]]:
    """{trial folder: result.json rows} under s3://hpo/PREFIX/, read directly from the server."""
    client, rows = bucket["client"], {}
    pages = client.get_paginator("list_objects_v2").paginate(Bucket="hpo", Prefix=f"{prefix}/")
    for key in (o["Key"] for page in pages for o in page.get("Contents", [])):
        if key.endswith("/result.json"):
            body = client.get_object(Bucket="hpo", Key=key)["Body"].read().decode()
            rows[key.split("/")[-2]] = [json.loads(x) for x in body.splitlines() if x.strip()]
    return rows


def _bucket_csv(bucket, key: str) -> pd.DataFrame:
    import io

    return pd.read_csv(io.BytesIO(bucket["client"].get_object(Bucket="hpo", Key=key)["Body"].read()))


def _first_report(search: subprocess.Popen, name: str):
    """A trial has reported an epoch, and trials still have epochs to run."""
    rows = _staged_rows(search, name)
    return any(rs for rs in rows.values()) and any(rs and rs[-1]["epoch"] < rs[-1]["epoch_of"] - 1
                                                   for rs in rows.values())


def _assert_bucket_holds_every_epoch(bucket, name: str, trials: int) -> None:
    """The bucket has the search's trials.csv with TRIALS completed trials, and each trial's every epoch."""
    table = _bucket_csv(bucket, f"results/{name}/trials.csv")
    assert len(table) == trials and set(table["status"]) == {"completed"}, table.to_string()
    rows = _bucket_rows(bucket, f"results/{name}")
    assert len(rows) == trials
    for trial, rs in rows.items():
        assert [r["epoch"] for r in rs] == list(range(1, EPOCHS + 1)), trial


@pytest.mark.timeout(900)
def test_a_storage_outage_shorter_than_the_limit_is_waited_out(tmp_path, bucket):
    """The S3 server is away for OUTAGE_S seconds mid-search: the trials wait (none fails, with
    search.max_failures=0), the search finishes, and the bucket holds every trial's epochs."""
    name, log = "outage", tmp_path / "search.log"
    search = _start([*_search_args("s3://hpo/results", name, 4, max_failures=0)], log, env=bucket["env"])
    try:
        wait_while_running(search, lambda: _first_report(search, name),
                           _with_log("no trial reported before the outage", log))
        bucket["switch"].off()
        before = sum(map(len, _staged_rows(search, name).values()))
        time.sleep(OUTAGE_S)  # the fault itself: the storage is away this long
        during = sum(map(len, _staged_rows(search, name).values())) - before
        running = search.poll() is None
        bucket["switch"].on()
        code, out = _finished(search, log, 600)
    finally:
        _stop(search)
    assert code == 0 and "Traceback" not in out, out[-5000:]
    _assert_bucket_holds_every_epoch(bucket, name, 4)
    # the outage held the trials up (a report reaches the driver once its checkpoint is in the
    # bucket: at most the one in flight per trial came through), and the search went on after it
    assert running and during <= 2, (running, during)


@pytest.mark.timeout(900)
def test_a_storage_outage_past_the_limit_stops_the_search_in_one_line_and_resume_finishes_it(tmp_path, bucket):
    """With a limit of a few seconds (HPO_STORAGE_OUTAGE_S, as remote.OUTAGE_LIMIT_S documents),
    a storage that stays away stops the search: exit 1, one line on stderr that names the bucket
    and the --resume command, no traceback. Once the storage is back, that command finishes it."""
    name, log = "gone", tmp_path / "search.log"
    env = dict(bucket["env"], HPO_STORAGE_OUTAGE_S="3")
    search = _start([*_search_args("s3://hpo/results", name, 4, max_failures=0)], log, env=env)
    try:
        wait_while_running(search, lambda: _first_report(search, name),
                           _with_log("no trial reported before the outage", log))
        bucket["switch"].off()
        code, out = _finished(search, log, 300)
    finally:
        _stop(search)
    assert code == 1 and "Traceback" not in out, out[-5000:]
    errors = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and errors[0] == out.strip().splitlines()[-1], out[-3000:]
    assert errors[0].startswith("error: object storage s3://hpo/results/gone unreachable for over 3 s"), errors
    resume = errors[0].split("continue the search with: ", 1)[1].split()
    assert resume[:3] == ["python", "-m", "search.run"] and resume[-1] == "--resume", resume

    bucket["switch"].on()
    log2 = tmp_path / "resume.log"
    resumed = _start(resume[3:], log2, env=env)
    try:
        code, out2 = _finished(resumed, log2, 600)
    finally:
        _stop(resumed)
    assert code == 0 and "Traceback" not in out2, out2[-5000:]
    _assert_bucket_holds_every_epoch(bucket, name, 4)
