"""The final model's refits side by side as Ray tasks, on real Ray clusters, from a real search.

One small search (embedded images, the cnn) serves every test: `analysis.retrain` then runs its
refits as Ray tasks on a one-node local cluster with room for two that it joins with
`--address`, on a two-node cluster (one refit per node), and in this process, where it runs
them on this CPU-only machine without `--address` (one refit already trains on every core) and
with `--serial`. That two refits trained
at the same time is read from the times each recorded itself (`started`/`ended` in
test_metrics.json), never from sleeps. Every process a test starts is in a process group of its
own, killed by PID at the end, also when the test fails.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from analysis import refits, retrain
from tests.conftest import ROOT, group_pids, kill_group, search_cli, write_space

# Refits long enough (a few seconds each) that two running side by side overlap by far more
# than the moment between their two tasks' starts.
SPACE = """
name: parallel
data: {source: animal-mnist, limit_per_class: 100}
search:
  num_samples: 1
  max_concurrent_trials: 1
  scheduler: {max_t: 2, grace_period: 2, reduction_factor: 2}
space:
  model: cnn
  cnn_width: 16
  lr: 0.003
  batch_size: 32
  image_size: 32
  epochs: 2
"""
REFIT_EPOCHS = "3"
RAY = str(Path(sys.executable).parent / "ray")
ESTIMATE = re.compile(r"refits: 2 on train\+val, 2 at a time as Ray tasks; about \S+, estimated from the "
                      r"trial's own epochs \(")

needs_two_cores = pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="two refits at once need two cores")


@pytest.fixture(scope="module")
def results(tmp_path_factory, animal_root) -> Path:
    """The results folder of one search of SPACE (one trial of 2 epochs), run by search.run in a
    process group of its own (its Ray killed by PID)."""
    tmp = tmp_path_factory.mktemp("parallel")
    found = search_cli([str(write_space(tmp / "space.yaml", SPACE)), "--storage", str(tmp / "results")], timeout=400)
    assert found.returncode == 0, found.stdout + found.stderr
    return tmp / "results" / "parallel"


def retrain_cli(args: list[str], timeout: float, env: dict | None = None) -> tuple[subprocess.CompletedProcess, list]:
    """`python -m analysis.retrain ARGS` in a process group of its own; returns what it printed and
    the group's processes still alive when it exited (a Ray it failed to shut down). Whatever is
    left of the group is then killed by PID, also on a timeout."""
    proc = subprocess.Popen([sys.executable, "-m", "analysis.retrain", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True, env=env)
    try:
        out, _ = proc.communicate(timeout=timeout)
        left = group_pids(proc.pid)
    finally:
        kill_group(proc.pid)
        proc.wait(timeout=30)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, ""), left


def refit_members(out: Path) -> list[dict]:
    """The refits among the final model's members, as test_metrics.json records them."""
    report = json.loads((out / retrain.TEST_FILE).read_text())
    return [m for m in report["final_members"] if m["made_by"] == "refit"]


def assert_overlap(members: list[dict]) -> None:
    """Both refits were training at one moment: each started before the other ended."""
    (a, b) = members
    assert a["started"] < a["ended"] and b["started"] < b["ended"]
    assert max(a["started"], b["started"]) < min(a["ended"], b["ended"]), members


def assert_model_folders(out: Path) -> None:
    """Each refit's folder holds its model (weights and meta), not its optimizer state."""
    for k in ("0", "1"):
        assert sorted(p.name for p in (out / "refits" / k).iterdir()) == ["meta.json", "model.pt"]


def _port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_start(args: list[str], env: dict, cpus: int = 1) -> int:
    """`ray start ARGS` with CPUS CPUs in a new session; the id of the process group its daemons keep."""
    proc = subprocess.Popen([RAY, "start", "--disable-usage-stats", "--node-ip-address=127.0.0.1", "--num-gpus=0",
                             f"--num-cpus={cpus}", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, env=env)
    try:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out
    except BaseException:
        kill_group(proc.pid)  # what it started before it failed
        raise
    return proc.pid


@contextlib.contextmanager
def ray_cluster(cpus_per_node: list[int]):
    """A Ray cluster of one node per entry of CPUS_PER_NODE (`ray start`, the first the head):
    the address, the group ids, the environment that reaches it. Killed by PID afterwards."""
    env = dict(os.environ, RAY_AUTH_MODE="token")  # as on a real cluster; the token in the tests' home
    subprocess.run([RAY, "get-auth-token", "--generate"], capture_output=True, env=env, timeout=60)
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay under 107 bytes
    gcs = _port()
    groups = []
    try:
        groups.append(_ray_start(["--head", f"--port={gcs}", "--dashboard-host=127.0.0.1",
                                  f"--temp-dir={ray_tmp}"], env, cpus_per_node[0]))
        groups += [_ray_start([f"--address=127.0.0.1:{gcs}"], env, cpus) for cpus in cpus_per_node[1:]]
        yield f"127.0.0.1:{gcs}", groups, env
    finally:
        for g in groups:
            kill_group(g, wait_s=15)  # SIGKILLed processes on a busy machine take a moment to go
        assert not any(group_pids(g) for g in groups)


def retrain_on_cluster(results: Path, out: Path, cluster: tuple) -> list[dict]:
    """Two refits on CLUSTER (`ray_cluster`'s address, groups, env) with `--address`, into OUT;
    checked: it said so, both trained at once, their models came back, the cluster still runs.
    The refits as test_metrics.json records them."""
    address, groups, env = cluster
    run, _ = retrain_cli([str(results), "--refits", "2", "--epochs", REFIT_EPOCHS, "--out", str(out),
                          "--address", address], 300, env)
    assert run.returncode == 0, run.stdout
    assert ESTIMATE.search(run.stdout), run.stdout
    members = refit_members(out)
    assert [m["ran_as"] for m in members] == ["ray task"] * 2
    assert_overlap(members)
    assert_model_folders(out)
    assert all(group_pids(g) for g in groups), "retrain stopped a cluster it only joined"
    return members


@needs_two_cores
@pytest.mark.timeout(500)
def test_refits_train_side_by_side_as_ray_tasks_on_a_local_cluster_with_room_for_two(results, tmp_path):
    with ray_cluster([2]) as cluster:
        retrain_on_cluster(results, tmp_path / "final", cluster)
        assert json.loads((tmp_path / "final" / "model" / "meta.json").read_text())["ensemble"] == 3


@pytest.fixture
def two_nodes():
    """A Ray cluster of two nodes with one CPU each (`ray start`): the address, the group ids."""
    with ray_cluster([1, 1]) as cluster:
        yield cluster


@needs_two_cores
@pytest.mark.timeout(500)
def test_refits_join_a_cluster_one_per_node_and_come_back(results, tmp_path, two_nodes):
    members = retrain_on_cluster(results, tmp_path / "final", two_nodes)
    # each node holds one refit: they trained on both, at once, and their models came back here
    assert len({m["ray_node_id"] for m in members}) == 2


@pytest.mark.parametrize("serial, why", [(True, ""), (False, f" ({refits.ONE_FILLS_CPUS})")])
@pytest.mark.timeout(300)
def test_refits_train_in_this_process_without_ray_on_cpus_alone_or_when_asked(results, tmp_path, serial, why):
    import ray

    assert not ray.is_initialized()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        retrain.retrain(results, epochs=1, out=tmp_path / "final", refits=2, serial=serial)
    assert f"refits: 2 on train+val, one after another in this process{why}; about " in printed.getvalue()
    assert not ray.is_initialized()
    members = refit_members(tmp_path / "final")
    assert [m["ran_as"] for m in members] == ["in process"] * 2
    assert members[0]["ended"] <= members[1]["started"]
    assert_model_folders(tmp_path / "final")


@pytest.mark.parametrize("capacity, demand, at_once", [
    ({"CPU": 64, "GPU": 0}, {"CPU": 1}, 0),            # CPUs alone: the in-process refit has every core
    ({"CPU": 16, "GPU": 2}, {"CPU": 1, "GPU": 1}, 2),  # a GPU each: side by side
    ({"CPU": 16, "GPU": 1}, {"CPU": 1, "GPU": 1}, 0),  # one GPU for one refit at a time
    ({"CPU": 16, "GPU": 1}, {"CPU": 4, "GPU": 0.25}, 4),
    ({"CPU": 2, "GPU": 1}, {"CPU": 2, "GPU": 0.5}, 0),  # GPU room for two, CPU room for one
])
@pytest.mark.timeout(10)
def test_a_local_ray_is_started_for_refits_only_where_each_has_a_gpu_and_two_fit(capacity, demand, at_once):
    chosen, why = refits.local_at_once(capacity, demand)
    assert chosen == at_once
    assert bool(why) == (at_once == 0)
