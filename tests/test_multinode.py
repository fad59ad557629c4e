"""Two real Ray nodes on this machine (`ray start --head`, then `ray start --address`) whose only
shared state is a bucket on a real S3 server on loopback (moto): the images are in
s3://hpo/images/, the results go to s3://hpo/results/, and each node has a cache of its own.
Trials spread over both nodes; when the worker node dies mid-trial the lost trial continues
from its checkpoint in the bucket on the surviving node; the driver is then killed (SIGKILL) and
`--resume` finishes the search; `analysis.rank`, `report` and `retrain` run on the bucket's
results from a third cache, as from a laptop.

Nothing here hopes the machine is slow or fast: the trials wait at gates the test opens
(files in HPO_TEST_HOLD_DIR, see trainables/trial/train_loop._test_hold), so the search is still
running when its driver is killed by construction, and each step waits on the state it needs.

Every process the test starts (the S3 server, the Ray nodes, the searches) runs in a process
group of its own, killed by PID at the end.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import ROOT, kill_group, stop_group, tune_snapshot, wait_while_running
from tests.s3_server import s3_server, upload_folder
from trainables import ray_internals
from trainables.trial.train_loop import TEST_HOLD_DIR

RAY = str(Path(sys.executable).parent / "ray")
# as on a real cluster: token authentication, the same token (~/.ray/auth_token) on every node
ENV = dict(os.environ, RAY_AUTH_MODE="token")
EPOCHS = 4
# The gates (trainables/trial/train_loop._test_hold): a trial waits before epoch N while HOLD_DIR/epoch-N
# exists. LAST: no trial can finish; FIRST: no new trial can train (a restored one starts later).
LAST, FIRST = f"epoch-{EPOCHS}", "epoch-1"


def _ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _start(args: list[str], env: dict) -> int:
    proc = subprocess.Popen([RAY, "start", "--disable-usage-stats", "--node-ip-address=127.0.0.1", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env=env)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    return proc.pid  # the session leader's pid is the group id its daemons keep


def _rows(exp: Path, pattern: str = "trial_*") -> dict[str, list[dict]]:
    rows = {}
    for d in exp.glob(pattern):
        f = d / "result.json"
        if f.exists():
            rows[d.name] = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
    return rows


@pytest.fixture
def bucket(tmp_path, animal_root):
    """The S3 server, with 60 images of each embedded class under s3://hpo/images/."""
    with s3_server("hpo") as server:
        images = tmp_path / "images"
        for cls in sorted(p.name for p in animal_root.iterdir() if p.is_dir()):
            (images / cls).mkdir(parents=True)
            for f in sorted((animal_root / cls).glob("*.png"))[:60]:
                shutil.copy(f, images / cls / f.name)
        upload_folder(server["client"], images, "hpo", "images")
        yield server


@pytest.fixture
def two_nodes(tmp_path, bucket):
    """Head and worker node, each with its own cache (HPO_CACHE_DIR) and the bucket's address and
    credentials in its environment, as an instance profile gives them on a cloud."""
    hold = tmp_path / "hold"
    hold.mkdir()
    env = dict(bucket["env"], RAY_AUTH_MODE="token", **{TEST_HOLD_DIR: str(hold)})  # the trials' gates
    envs = {node: dict(env, HPO_CACHE_DIR=str(tmp_path / f"{node}-cache")) for node in ("head", "node_b")}
    subprocess.run([RAY, "get-auth-token", "--generate"], capture_output=True, env=ENV, timeout=60)
    gcs, dash, client, *agent = _ports(11)
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay under 107 bytes
    head = _start(["--head", f"--port={gcs}", "--num-cpus=1", "--num-gpus=0", '--resources={"trial_driver": 4}',
                   "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--ray-client-server-port={client}",
                   f"--dashboard-agent-listen-port={agent[0]}", f"--dashboard-agent-grpc-port={agent[1]}",
                   f"--runtime-env-agent-port={agent[2]}", f"--metrics-export-port={agent[3]}",
                   f"--temp-dir={ray_tmp}"], envs["head"])
    groups = [head]
    try:
        groups.append(_start([f"--address=127.0.0.1:{gcs}", "--num-cpus=1", "--num-gpus=0",
                              '--resources={"node_b": 1}', f"--dashboard-agent-listen-port={agent[4]}",
                              f"--dashboard-agent-grpc-port={agent[5]}", f"--runtime-env-agent-port={agent[6]}",
                              f"--metrics-export-port={agent[7]}"], envs["node_b"]))
        yield f"127.0.0.1:{gcs}", groups, ray_tmp, envs
    finally:
        for g in groups:  # until every process the test started is gone: a raylet may fork one while the kill runs
            stop_group(g, timeout=60)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _node_ids(address: str) -> dict[str, str]:
    """{'head'|'node_b': node id, 'poll_on_b': the Train poll a task on node_b sees}, read through
    a short-lived driver that joins the cluster as `search.run --address` does."""
    code = ("import json, os, ray; from trainables import ray_internals; "
            "ray.init(address=%r, log_to_driver=False, **ray_internals.init_kwargs(local=False)); "
            "ids = {('node_b' if 'node_b' in n['Resources'] else 'head'): n['NodeID'] "
            "for n in ray.nodes() if n['Alive']}; "
            "env = ray.remote(lambda: os.environ.get('RAY_TRAIN_HEALTH_CHECK_INTERVAL_S')); "
            "print(json.dumps({**ids, 'poll_on_b': ray.get(env.options(resources={'node_b': 0.01}).remote())}))"
            % address)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=ENV, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


# While the search runs, the Tune driver writes each trial's result.json into its staging
# directory under the session's temp dir and uploads it to the bucket only every few seconds, so
# the test watches the staging copy.
STAGING = "session_*/artifacts/*/multi/driver_artifacts/trial_*"


def _wait_rows(search, ray_tmp: str, found, what: str, timeout: float = 300):
    """Poll the staging rows until FOUND(rows) gives something; fail with WHAT if it never does."""
    return wait_while_running(search, lambda: found(_rows(Path(ray_tmp), STAGING)), what, timeout)


def _failed_over(ray_tmp: str, trial: str) -> bool:
    """Whether the Tune driver has handled TRIAL's failure (Trial.handle_error writes its error.txt,
    then the trial is PENDING again, first in line: Tune's FIFO choose_trial_to_run)."""
    return any(Path(ray_tmp).glob(f"{STAGING[:-len('trial_*')]}{trial}/{ray_internals.ERROR_FILE}"))


def _bucket_snapshot(bucket) -> dict[str, dict] | None:
    """Tune's newest snapshot in the bucket, once it is whole (`tests.conftest.tune_snapshot`)."""
    prefix = "results/multi/"
    return tune_snapshot(sorted(_bucket_keys(bucket, prefix)), lambda name: _bucket_file(bucket, prefix + name))


def _saved_after_failover(bucket, lost: str, head: str) -> bool:
    """Whether the bucket holds a whole snapshot in which LOST finished on the HEAD node and all
    4 trials are made: the last that changes, the rest waiting at the FIRST gate."""
    saved = _bucket_snapshot(bucket) or {}
    trial = saved.get(lost, {})
    return len(saved) == 4 and trial.get("status") == "TERMINATED" and trial["last"].get("node_id") == head


def _bucket_file(bucket, key: str) -> bytes:
    return bucket["client"].get_object(Bucket="hpo", Key=key)["Body"].read()


def _bucket_keys(bucket, prefix: str) -> set[str]:
    pages = bucket["client"].get_paginator("list_objects_v2").paginate(Bucket="hpo", Prefix=prefix)
    return {o["Key"][len(prefix):] for page in pages for o in page.get("Contents", [])}


def _cli(module: str, args: list[str], env: dict, log: Path, timeout: float) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS` in a process group of its own, killed by PID when it ends or times out."""
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                text=True, env=env, start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        finally:
            kill_group(proc.pid)
            proc.wait(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, log.read_text(), "")


@pytest.mark.timeout(900)
def test_a_search_whose_only_shared_state_is_a_bucket(two_nodes, bucket, tmp_path):
    address, groups, ray_tmp, envs = two_nodes
    hold = Path(envs["head"][TEST_HOLD_DIR])
    nodes = _node_ids(address)
    # the search's Train settings reach processes `ray start` launched, which do not inherit its environment
    assert nodes.pop("poll_on_b") == ray_internals.TRAIN_POLL[1]
    assert set(nodes) == {"head", "node_b"}
    args = [str(ROOT / "spaces" / "smoke.yaml"), "--address", address, "--storage", "s3://hpo/results",
            "--name", "multi", "--data", "s3://hpo/images/"]
    cmd = [sys.executable, "-m", "search.run", *args,
           "--set", "search.num_samples=4", "--set", "search.max_concurrent_trials=2",
           "--set", "search.points_to_evaluate=[]", "--set", "search.max_failures=2",
           "--set", f"search.scheduler.grace_period={EPOCHS}", "--set", f"space.epochs={EPOCHS}",
           "--set", f"search.scheduler.max_t={EPOCHS}", "--set", "space.lr=0.003",
           "--set", "data.limit_per_class=null", "--set", "space.image_size=64"]
    (hold / LAST).touch()  # before the search starts: no trial can finish until the test says so
    log = open(tmp_path / "search.log", "w")  # a file, not a pipe: nothing blocks while the test polls
    search = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True, env=envs["head"],
                              start_new_session=True)
    try:
        # The two first trials (one per node: each holds the CPU of one) are past their first
        # epoch; neither can finish, so no third has started. From now on no new trial trains.
        _wait_rows(search, ray_tmp, lambda rows: sum(1 for rs in rows.values() if rs) >= 2,
                   "two trials never reported an epoch")
        (hold / FIRST).touch()
        lost = _wait_rows(search, ray_tmp, lambda rows: next(
            (t for t, rs in rows.items() if any(r.get("node_id") == nodes["node_b"] and r["epoch"] >= 2 for r in rs)),
            None), "no trial reached epoch 2 on the worker node")
        kill_group(groups[1])  # the worker node dies: its raylet and the trial on it
        before = max(r["epoch"] for r in _rows(Path(ray_tmp), STAGING)[lost] if r["node_id"] == nodes["node_b"])
        # Once Tune has failed the lost trial over, the head's trial may finish: the lost trial,
        # PENDING before any new one, gets the head's CPU next.
        wait_while_running(search, lambda: _failed_over(ray_tmp, lost),
                           f"Tune never failed {lost} over after its node died")
        (hold / LAST).unlink()
        # the lost trial goes on on the head, from its last checkpoint in the bucket (not from epoch 1)
        after = _wait_rows(search, ray_tmp, lambda rows: [r for r in rows.get(lost, [])
                                                          if r.get("node_id") == nodes["head"]],
                           f"{lost} never continued on the head node")
        assert before < EPOCHS and 1 < after[0]["epoch"] <= before + 1, (before, after[0]["epoch"])
        # Tune's state in the bucket (saved every ~10 s) has the lost trial finished on the head,
        # whole: what --resume reads does not change after this (the other trials wait at FIRST)
        wait_while_running(search, lambda: _saved_after_failover(bucket, lost, nodes["head"]),
                           f"the bucket never held a whole snapshot with {lost} finished on the head node")
        # by construction: the trials after the first two wait at the FIRST gate
        assert search.poll() is None, "the search ended before its driver could be killed"
        kill_group(search.pid)  # the driver dies (SIGKILL) with trials left to run
    finally:
        kill_group(search.pid)  # by PID, also when the test fails before the search ends
        search.wait(timeout=60)
        log.close()
        for gate in hold.iterdir():  # the resumed search runs without gates
            gate.unlink()
    first = (tmp_path / "search.log").read_text()
    assert "copying 600 images from s3://hpo/images/" in first, first

    resumed = _cli("search.run", [*args, "--resume"], envs["head"], tmp_path / "resume.log", timeout=600)
    assert resumed.returncode == 0, first + resumed.stdout
    done = int(resumed.stdout.split("resuming: ")[1].split(" of ")[0])
    assert done < 4, resumed.stdout  # the search had trials left to run, and ran them
    trials = pd.read_csv(io.BytesIO(_bucket_file(bucket, "results/multi/trials.csv")))
    assert len(trials) == 4 and set(trials["status"]) == {"completed"}, resumed.stdout
    assert set(trials["epochs_run"]) == {EPOCHS}
    # nothing a trial reads is a path of one machine: the split and the runs are in the bucket,
    # and each node decoded the images into its own cache
    context = json.loads(_bucket_file(bucket, "results/multi/context.json"))
    assert context["data_root"] == "s3://hpo/images/" and context["split_file"] == "s3://hpo/results/multi/split.csv"
    assert context["cache_dir"] == "" and context["footprint_dir"] == ""
    for node in ("head", "node_b"):
        cache = tmp_path / f"{node}-cache"
        assert list(cache.glob("remote/*/*/*.png")) and list(cache.glob("decoded/*.npy")), node

    laptop = dict(bucket["env"], HPO_CACHE_DIR=str(tmp_path / "laptop-cache"))
    for module, extra in (("analysis.rank", []), ("analysis.report", []),
                          ("analysis.retrain", ["--final", "checkpoint"])):
        run = _cli(module, ["s3://hpo/results/multi", *extra], laptop, tmp_path / f"{module}.log", timeout=300)
        assert run.returncode == 0, run.stdout
        assert " of s3://hpo/results/multi to " in run.stdout, run.stdout  # copied down first, and said so
    written = _bucket_keys(bucket, "results/multi/")
    assert {"leaderboard.csv", "report.html", "retrained/test_metrics.json", "retrained/model/model.pt",
            "optuna.journal", "trials.csv", "split.csv"} <= written
    tested = json.loads(_bucket_file(bucket, "results/multi/retrained/test_metrics.json"))
    split = pd.read_csv(io.BytesIO(_bucket_file(bucket, "results/multi/split.csv")))
    assert tested["test_images"] == (split["split"] == "test").sum() > 0 and 0 <= tested["test_acc"] <= 1
