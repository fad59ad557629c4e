"""Two real Ray nodes on this machine (`ray start --head`, then `ray start --address`): trials
spread over both, and when the worker node dies mid-trial the search still completes every trial,
the lost one continuing from its last checkpoint on the surviving node.

Every Ray process the test starts runs in a process group of its own, killed by PID at the end.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import ROOT, group_pids, kill_group
from trainables import ray_internals

RAY = str(Path(sys.executable).parent / "ray")
# as on a real cluster: token authentication, the same token (~/.ray/auth_token) on every node
ENV = dict(os.environ, RAY_AUTH_MODE="token")
# Long enough that the trial seen at epoch 2 on the worker node is still running when the node is
# killed, although results reach the test through the Train controller and the Tune driver.
EPOCHS = 10


def _ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _start(args: list[str]) -> int:
    proc = subprocess.Popen([RAY, "start", "--disable-usage-stats", "--node-ip-address=127.0.0.1", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env=ENV)
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
def two_nodes(tmp_path):
    subprocess.run([RAY, "get-auth-token", "--generate"], capture_output=True, env=ENV, timeout=60)
    gcs, dash, client, *agent = _ports(11)
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay under 107 bytes
    head = _start(["--head", f"--port={gcs}", "--num-cpus=1", "--num-gpus=0", '--resources={"trial_driver": 4}',
                   "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--ray-client-server-port={client}",
                   f"--dashboard-agent-listen-port={agent[0]}", f"--dashboard-agent-grpc-port={agent[1]}",
                   f"--runtime-env-agent-port={agent[2]}", f"--metrics-export-port={agent[3]}",
                   f"--temp-dir={ray_tmp}"])
    groups = [head]
    try:
        groups.append(_start([f"--address=127.0.0.1:{gcs}", "--num-cpus=1", "--num-gpus=0",
                              '--resources={"node_b": 1}', f"--dashboard-agent-listen-port={agent[4]}",
                              f"--dashboard-agent-grpc-port={agent[5]}", f"--runtime-env-agent-port={agent[6]}",
                              f"--metrics-export-port={agent[7]}"]))
        yield f"127.0.0.1:{gcs}", groups, ray_tmp
    finally:
        for g in groups:
            kill_group(g)
        deadline = time.time() + 15  # SIGKILLed processes on a busy machine take a moment to go
        while any(group_pids(g) for g in groups) and time.time() < deadline:
            time.sleep(0.2)
        assert not any(group_pids(g) for g in groups)  # every process the test started is gone
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


def _kill_a_node_mid_trial(search, nodes: dict, groups: list[int], ray_tmp: str) -> str:
    """Wait for a trial to reach epoch 2 on the worker node, kill that node, wait for the search;
    returns the trial that lost its node."""
    # While the search runs, the Tune driver writes each trial's result.json into its staging
    # directory under the session's temp dir and copies it to the results folder only every
    # few seconds (7 s late here, a whole trial at these sizes), so the test reads the staging copy.
    staging = "session_*/artifacts/*/multi/driver_artifacts/trial_*"
    killed_trial, deadline = None, time.time() + 300
    while killed_trial is None and time.time() < deadline and search.poll() is None:
        for trial, rows in _rows(Path(ray_tmp), staging).items():
            if any(r.get("node_id") == nodes["node_b"] and r["epoch"] >= 2 for r in rows):
                killed_trial = trial
        time.sleep(0.5)
    assert killed_trial, "no trial reached epoch 2 on the worker node"
    kill_group(groups[1])  # the worker node dies: its raylet and the train worker on it
    search.wait(timeout=600)
    return killed_trial


def test_trials_spread_over_nodes_and_survive_a_dead_node(two_nodes, tmp_path):
    address, groups, ray_tmp = two_nodes
    nodes = _node_ids(address)
    # the search's Train settings reach processes `ray start` launched, which do not inherit its environment
    assert nodes.pop("poll_on_b") == ray_internals.TRAIN_POLL[1]
    assert set(nodes) == {"head", "node_b"}
    exp = tmp_path / "res" / "multi"
    cmd = [sys.executable, "-m", "search.run", str(ROOT / "spaces" / "smoke.yaml"), "--address", address,
           "--storage", str(tmp_path / "res"), "--name", "multi",
           "--set", "search.num_samples=4", "--set", "search.max_concurrent_trials=2",
           "--set", "search.points_to_evaluate=[]", "--set", "search.max_failures=2",
           "--set", f"search.scheduler.grace_period={EPOCHS}", "--set", f"space.epochs={EPOCHS}",
           "--set", f"search.scheduler.max_t={EPOCHS}", "--set", "space.lr=0.003",
           "--set", "data.limit_per_class=300", "--set", "space.image_size=24"]
    log = open(tmp_path / "search.log", "w")  # a file, not a pipe: nothing blocks while the test polls
    search = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True, env=ENV,
                              start_new_session=True)
    try:
        killed_trial = _kill_a_node_mid_trial(search, nodes, groups, ray_tmp)
    finally:
        kill_group(search.pid)  # by PID, also when the test fails before the search ends
        search.wait(timeout=60)
    out = (tmp_path / "search.log").read_text()
    assert search.returncode == 0, out

    trials = pd.read_csv(exp / "trials.csv")
    assert len(trials) == 4 and set(trials["status"]) == {"completed"}, out
    rows = _rows(exp)
    used = {r["node_id"] for rs in rows.values() for r in rs}
    assert used == {nodes["head"], nodes["node_b"]}  # trials ran on both nodes
    lost = rows[killed_trial]
    after = [r for r in lost if r["node_id"] == nodes["head"]]
    before = [r for r in lost if r["node_id"] == nodes["node_b"]]
    assert before[-1]["epoch"] < EPOCHS, (f"{killed_trial} finished on the worker node before the kill: its "
                                          f"results reached the test {EPOCHS - 2}+ epochs late")
    assert after and after[-1]["epoch"] == EPOCHS
    assert after[0]["epoch"] >= before[-1]["epoch"]  # continued from a checkpoint (at most one report redone)
    assert after[0]["epoch"] > 1
