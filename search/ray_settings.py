"""Ray settings for a search whose every trial fits one Ray Train `TorchTrainer`.

`apply_env()` sets environment variables (only where the user has not set them), and
`init_kwargs()` returns extra keyword arguments for `ray.init`; call both before starting a
local cluster, as `search.run.start_ray` and `bench/overhead.py` do. The figures below were
measured with bench/overhead.py on the 2-core, no-GPU development box (shared, so noisy:
medians of interleaved runs); see the bench for how.

What a trial costs there, and why it stays well above a plain function trial: each trial starts
six fresh Python processes (the Tune trial actor, its Tune report queue, the Train controller,
Train's placement-group cleaner and synchronization actor, and the Train worker), each
importing Ray (~0.8 CPU-s), most also `ray.train` (pandas, pyarrow) and three of them torch
(~1.3 CPU-s). That is 12-14 CPU-s per trial on 2 cores before any training, so about 6-7 s
per trial is a floor no setting here removes. Ray keeps no pool of pre-started processes for
actors (only `num_cpus` idle workers at start, never refilled, and none at all once the job has
a runtime_env), so a `worker_process_setup_hook` that imports torch only adds that import to
every process: measured worse (+5 CPU-s and +5 s per trial).
"""
from __future__ import annotations

import os
import socket

# Polling period of the Train controller (Ray's default: 2 s). Each `ray.train.report` waits
# for the next poll before Tune sees it, and the end of training is noticed one poll late, so
# the default costs a trial of E epochs about 2*(E+1) s of pure waiting: ~5 s in the bench's
# 2-epoch trial, 0.5 s at 0.2 s. A poll is one tiny actor call per worker (5/s: well under
# 1% of a core).
HEALTH_CHECK_INTERVAL_S = "0.2"


def apply_env(local: bool = True) -> None:
    """Environment variables for the driver, inherited by every Ray process it starts.

    `local`: the cluster is the one this process starts on this machine (not `--address`)."""
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", HEALTH_CHECK_INTERVAL_S)
    if local:
        # The preemption watcher is one more actor (a whole Python process, ~1.6 CPU-s) per
        # trial, polling for nodes being drained: a local machine is never preempted.
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")


def init_kwargs(local: bool = True, dashboard_host: str = "127.0.0.1") -> dict:
    """Extra `ray.init` arguments; `dashboard_host` must be the one given to `ray.init`.

    For a local cluster: a free dashboard port chosen here, and its address given to every
    worker as RAY_API_SERVER_ADDRESS. Without it, Train's placement-group cleaner (which frees a
    trial's CPUs when Tune kills the trial mid-run: ASHA stops, the last epoch) finds the
    cluster by scanning the machine for Ray instances and, when it finds more than one (a test
    run, another user's search, a second search), fails with "Found multiple active Ray
    instances" on every check: the stopped trial's CPUs are never freed and the search hangs
    with "The worker group startup timed out". With an explicit port `ray.init` fails loudly if
    the port is taken at start, instead of moving to another one."""
    if not local:
        return {}
    if os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS"):
        return {}  # the user says where the cluster is
    with socket.socket() as s:
        s.bind((dashboard_host, 0))
        port = s.getsockname()[1]
    return {
        "dashboard_port": port,
        "runtime_env": {"env_vars": {"RAY_API_SERVER_ADDRESS": f"http://{dashboard_host}:{port}"}},
    }
