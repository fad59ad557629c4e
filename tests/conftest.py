"""Shared fixtures: small real image folders, and the embedded set in a per-session cache."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


_TEMP_ROOT: list[str] = []


def pytest_configure(config):
    """Before any test module is imported (some read os.environ at import): the embedded set is
    materialized once per test session outside the user's cache; the tests' home is a temporary
    folder, so that nothing (Ray's ~/.ray/auth_token, caches) is written into the real one; and
    every process the tests start inherits SESSION_MARK."""
    import tempfile

    root = tempfile.mkdtemp(prefix="hpo-tests-")
    _TEMP_ROOT.append(root)
    for name, sub in (("HPO_CACHE_DIR", "cache"), ("HOME", "home")):
        os.makedirs(os.path.join(root, sub))
        os.environ[name] = os.path.join(root, sub)
    key, value = SESSION_MARK.split("=")
    os.environ[key] = value


def pytest_unconfigure(config):
    import shutil

    for root in _TEMP_ROOT:
        shutil.rmtree(root, ignore_errors=True)


SESSION_MARK = f"HPO_TEST_SESSION={os.getpid()}"  # inherited by every process the tests start


def _started_here(pid: int) -> bool:
    """Whether a process carries this test session's mark in its environment: true also for
    processes that outlived their parent, and false for other users' Ray on a shared machine."""
    try:
        return SESSION_MARK.encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:  # gone, or not ours to read
        return False


def _ray_processes() -> set[int]:
    out = subprocess.run(["ps", "-o", "pid=,args=", "-A"], capture_output=True, text=True).stdout.splitlines()
    ray = ("raylet", "gcs_server", "ray::", "dashboard.py", "log_monitor.py", "monitor.py", "runtime_env/agent")
    return {int(ln.split()[0]) for ln in out if any(w in ln for w in ray) and _started_here(int(ln.split()[0]))}


@pytest.fixture(scope="module", autouse=True)
def _no_ray_process_survives_the_module():
    """After each test module, every Ray process it started is gone (given a few seconds to exit)."""
    import time

    before = _ray_processes()
    yield
    deadline = time.time() + 20
    while (left := _ray_processes() - before) and time.time() < deadline:
        time.sleep(0.5)
    assert not left, f"Ray processes outlived the test module: {sorted(left)}"


@pytest.fixture(scope="session")
def animal_root():
    from trainables.data.dataset import resolve_source

    return resolve_source("animal-mnist")


@pytest.fixture(scope="module")
def ray_cluster():
    """A real local Ray cluster (2 CPUs, dashboard on localhost) for one test module's searches.

    Per module, not per session, so that the multi-node test runs with no other cluster up."""
    import ray

    from trainables import ray_internals

    ray_internals.apply_env()
    extra = ray_internals.init_kwargs(local=True, dashboard_host="127.0.0.1")
    ray.init(num_cpus=2, resources={"trial_driver": 4}, dashboard_host="127.0.0.1", log_to_driver=False, **extra)
    # the tests' own State API calls find this cluster too, even with other Ray instances on the machine
    api = extra.get("runtime_env", {}).get("env_vars", {}).get("RAY_API_SERVER_ADDRESS")
    if api:
        os.environ["RAY_API_SERVER_ADDRESS"] = api
    yield
    ray.shutdown()
    if api:
        os.environ.pop("RAY_API_SERVER_ADDRESS", None)


def make_folder(root: Path, classes: dict[str, int], size: int = 12, seed: int = 0) -> Path:
    """Class subfolders of distinct random PNGs (each class has its own mean brightness)."""
    rng = np.random.default_rng(seed)
    for ci, (cls, n) in enumerate(classes.items()):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            arr = rng.integers(0, 60, (size, size, 3), dtype=np.uint8) + np.uint8(60 * ci % 190)
            Image.fromarray(arr).save(root / cls / f"{i:03d}.png")
    return root


@pytest.fixture
def folder(tmp_path):
    return make_folder(tmp_path / "imgs", {"a": 20, "b": 20, "c": 20})


def trial_context(index, split_file: Path, spec=None):
    """The TrialContext a search of SPEC (default: an empty space) would give its trials, as
    search.run builds it, for a split of INDEX saved at SPLIT_FILE."""
    from search import inputs, space

    return inputs.trial_context(spec or space.SpaceFile(), index.root, index.classes, split_file,
                                Path(split_file).parent)


def write_space(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def group_pids(pgid: int) -> list[int]:
    """Live processes of a process group (zombies, dead and waiting to be reaped, do not count)."""
    out = subprocess.run(["ps", "-o", "pid=,pgid=,stat=", "-A"], capture_output=True, text=True).stdout.splitlines()
    rows = (ln.split() for ln in out if ln.strip())
    return [int(p) for p, g, stat in rows if int(g) == pgid and not stat.startswith("Z")]


def _with_descendants(pids: list[int]) -> list[int]:
    """The processes and all their descendants (Ray's workers leave their raylet's process group)."""
    out = subprocess.run(["ps", "-o", "pid=,ppid=", "-A"], capture_output=True, text=True).stdout.splitlines()
    children: dict[int, list[int]] = {}
    for ln in out:
        pid, ppid = map(int, ln.split())
        children.setdefault(ppid, []).append(pid)
    found, todo = [], list(pids)
    while todo:
        p = todo.pop()
        found.append(p)
        todo += children.get(p, [])
    return found


def kill_group(pgid: int, wait_s: float = 0) -> None:
    """SIGKILL every live process of a process group, and their descendants, by PID; with WAIT_S,
    return only once each is dead (a killed Ray worker that still writes a checkpoint for a
    moment would race what the test does next), failing after WAIT_S seconds."""
    import time

    killed = _with_descendants(group_pids(pgid))
    for pid in killed:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.time() + wait_s
    while wait_s and [p for p in killed if _alive(p)]:
        assert time.time() < deadline, f"still alive after SIGKILL: {[p for p in killed if _alive(p)]}"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    """Whether PID runs (a zombie, dead and waiting to be reaped, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def search_cli(args: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """`python -m search.run ARGS`, as `module_cli` runs it."""
    return module_cli("search.run", args, timeout, **kwargs)


def module_cli(module: str, args: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS` in a process group of its own. When it returns or times out,
    whatever is left of that group (a Ray cluster it started, the scripts it ran) is killed by
    PID; a timeout then fails the test with subprocess.TimeoutExpired."""
    proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, **kwargs)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        kill_group(proc.pid)
        proc.wait(timeout=30)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def require_extra(module: str):
    """Import MODULE of an optional extra (`pip install -e ".[onnx]"`): skipped where it is missing,
    but in CI (HPO_TEST_REQUIRE_EXTRAS=1, set by .ci/run, which installs the README's extras) a
    missing extra fails the test, as a missing browser does."""
    import importlib

    if os.environ.get("HPO_TEST_REQUIRE_EXTRAS"):
        return importlib.import_module(module)
    return pytest.importorskip(module)


def wait_until(check, timeout: float, what, interval: float = 0.2):
    """Poll CHECK() until it returns something truthy, and return that; fail the test with WHAT
    (a string, or a function that says it then) if TIMEOUT seconds pass first. A wait on a
    state, never a sleep that hopes the state has come."""
    import time

    deadline = time.time() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.time() > deadline:
            pytest.fail(f"{what() if callable(what) else what} (waited {timeout:g} s)")
        time.sleep(interval)


def wait_while_running(proc, check, what, timeout: float = 300):
    """`wait_until` CHECK() while the process PROC runs: fail with WHAT, and PROC's exit code, as
    soon as it ends without CHECK() having given something."""
    def found():
        hit = check()
        if not hit and proc.poll() is not None:
            pytest.fail(f"{what() if callable(what) else what} (the process ended, exit code {proc.poll()})")
        return hit

    return wait_until(found, timeout, what)


def alive_pids(pids) -> list[int]:
    """The PIDS that still run (zombies do not)."""
    return [p for p in pids if _alive(p)]


def stop_group(pgid: int, timeout: float = 60) -> None:
    """SIGKILL a process group and its descendants, by PID, again and again until no live process
    is left in the group: a process it forked while the first kill ran (a Ray agent) goes too."""
    wait_until(lambda: kill_group(pgid, wait_s=timeout) or not group_pids(pgid), timeout,
               lambda: f"processes of group {pgid} outlived SIGKILL: {group_pids(pgid)}")


def session_ray_processes() -> set[int]:
    """The Ray processes (raylet, GCS, workers, agents) this test session started that still run."""
    return _ray_processes()


def tune_snapshot(names, read) -> dict[str, dict] | None:
    """Tune's newest experiment snapshot in a results folder or bucket, if it is whole: {trial
    folder: {"id", "status", "last" (its last report)}}; None while it is not. NAMES are the
    folder's file names, READ(name) a file's bytes.

    Tune saves a snapshot as several files (the trial list, then its searcher's state) and copies
    them to storage one by one, while its next save may already rewrite them: for a moment storage
    can hold a trial list newer than its searcher. A driver killed then leaves a --resume that
    never starts the trials left (the searcher's concurrency limiter still counts finished trials
    as running). Whole: the searcher has made every listed trial (its counter, Optuna's trials)
    and counts exactly the unfinished ones as running."""
    import fnmatch
    import json
    import pickle

    from trainables.ray_internals import LAST_RESULT, STATE_GLOB

    def newest(pattern):
        found = sorted(n for n in names if fnmatch.fnmatch(n, pattern))
        return found[-1] if found else None

    files = [newest(p) for p in (STATE_GLOB, "search_gen_state-*.json", "searcher-state-*.pkl")]
    if None in files:
        return None
    try:
        state = json.loads(read(files[0]))
        generator, searcher = pickle.loads(read(files[1])), pickle.loads(read(files[2]))
    except Exception:  # a file being written
        return None
    trials = {}
    for entry in state.get("trial_data", []):
        trial, meta = json.loads(entry[0]), json.loads(entry[1])
        last = meta.get(LAST_RESULT) or {}
        trials[trial.get("relative_logdir") or f"trial_{trial['trial_id']}"] = {
            "id": trial["trial_id"], "status": trial.get("status"),
            "last": json.loads(last) if isinstance(last, str) else last}
    made = {t["id"] for t in trials.values()}
    unfinished = {t["id"] for t in trials.values() if t["status"] not in ("TERMINATED", "ERROR")}
    running = generator.get("name:ConcurrencyLimiter", {}).get("live_trials", unfinished)
    whole = generator.get("counter") == len(made) and set(searcher.get("_ot_trials", {})) == made \
        and set(running) == unfinished
    return trials if whole else None


def folder_snapshot(folder) -> dict[str, dict] | None:
    """`tune_snapshot` of a results folder on this machine."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    return tune_snapshot([p.name for p in folder.iterdir()], lambda name: (folder / name).read_bytes())
