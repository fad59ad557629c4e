"""Ray settings for a search whose every trial fits one Ray Train `TorchTrainer`.

Call `apply_env()` and pass `init_kwargs()` to `ray.init`, both before starting a local
cluster or joining one, as `search.run.start_ray`, the tests' cluster fixture and
`bench/overhead.py` do. Figures are from bench/overhead.py on the 2-core development box; that
box is shared (its load swung between 1 and 30 while measuring, and Ray runs its workers at
nice 15), so they are medians of interleaved runs, good to a few seconds.

Where a trial's seconds go, and why no setting gets it near a plain function trial: every
trial starts six fresh Python processes one after the other (the Tune trial actor, then the
Train controller, then Train's placement-group cleaner, synchronization actor and worker;
plus the trial's Tune report queue), each importing Ray (~0.8 CPU-s), most of them
`ray.train` (pandas, pyarrow) and three of them torch (~1.3 CPU-s): about 12 CPU-s a trial
before any training. Ray keeps no pool of started processes for actors: only `num_cpus` idle
workers at start, never refilled, not used by actors with their own runtime_env (Train's
controller and workers have one), and none at all once the job has a runtime_env. So a
`worker_process_setup_hook` importing torch only adds that import to every process: measured
worse, +5 CPU-s and +5 s a trial. What is left to cut is waiting, and processes nobody uses.
"""
from __future__ import annotations

import os
import socket

# Polling period of the Train controller (Ray's default: 2 s). Each `ray.train.report` reaches
# Tune only at the next poll, and the end of training is noticed one poll late: the default
# costs a trial of E epochs up to 2*(E+1) s of waiting (the bench's 2-epoch trial: ~5 s; its
# Tune results arrived 2 s apart and its end 3 s after the last report), 0.2 s polls ~0.5 s.
# A poll is one small actor call per worker, 5 a second. The shorter poll exposes a Ray race
# that trainables.driver works around (see HandOverTuneReportCallback there).
HEALTH_CHECK_INTERVAL_S = "0.2"

# How long a reused Tune actor waits for the last trial's thread to end (a stopped trial unwinds
# through its `finally` blocks: DataLoader workers, temporary checkpoint folders) before it
# gives up on reusing the actor and fails the next trial. Ray's default is 2 s.
ACTOR_HANDOVER = ("TUNE_FUNCTION_THREAD_TIMEOUT_S", "30")

# glibc's malloc arenas in Ray's processes. A reused Tune actor runs each trial in a new thread,
# and each new thread may get an arena of its own, whose freed memory stays with the process:
# its private memory crept up a few MB a trial, noisily (tests/test_trial_runtime; 20 trials of
# 2 epochs: 575-612 MB at trials 6-10, 607-681 MB at 16-20). With two arenas it stayed at
# 500-503 MB from trial 2 to 20. Read by glibc when a process starts, so set before Ray starts.
MALLOC_ARENAS = ("MALLOC_ARENA_MAX", "2")


def apply_env(local: bool = True) -> None:
    """Environment variables for this process, inherited by every Ray process it starts.

    `local`: the cluster is the one this process starts on this machine (not `--address`)."""
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", HEALTH_CHECK_INTERVAL_S)
    # Tune snapshots the experiment whenever a trial kept `checkpoint.keep` checkpoints since the
    # last snapshot (so a resume never points at a deleted one) and warns when that happens often,
    # as it does with trials of a few seconds: expected here, not a problem to show the user.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault(*ACTOR_HANDOVER)
    os.environ.setdefault(*MALLOC_ARENAS)
    if local:
        # The preemption watcher is one more actor per trial (a whole Python process, ~1.6 CPU-s
        # a trial measured) polling for nodes being drained: a local machine never is.
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")


def init_kwargs(local: bool = True, dashboard_host: str = "127.0.0.1") -> dict:
    """Extra `ray.init` arguments; `dashboard_host` must be the one given to `ray.init`.

    For a cluster we join (`local=False`): only the Train poll, as the job's runtime_env.

    For a local cluster: a free dashboard port picked here, and its address given to every
    worker as RAY_API_SERVER_ADDRESS (a runtime_env with this one variable; the working
    directory and imports are untouched). Not about speed: without it, Train's placement-group
    cleaner, which frees a trial's CPUs when Tune kills the trial mid-run (ASHA stops, the last
    epoch), looks for the cluster by scanning the machine and, as soon as a second Ray instance
    runs there (a test run, another search), fails with "Found multiple active Ray instances"
    on every check: the CPUs are never freed and the next trial waits forever ("The worker
    group startup timed out"); seen with spaces/smoke.yaml on the shared box. With an explicit
    port, `ray.init` fails if the port was taken meanwhile, rather than moving to another."""
    if not local:
        # The Ray processes of a cluster we join were started by `ray start`, not by this
        # process, so they do not inherit its environment: the job's runtime_env carries the
        # Train poll to each trial, whose TorchTrainer passes it on to its controller.
        poll = os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", HEALTH_CHECK_INTERVAL_S)
        return {"runtime_env": {"env_vars": {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": poll,
                                             ACTOR_HANDOVER[0]: os.environ.get(*ACTOR_HANDOVER),
                                             MALLOC_ARENAS[0]: os.environ.get(*MALLOC_ARENAS)}}}
    if os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS"):
        return {}  # the user says where the cluster is
    with socket.socket() as s:
        s.bind((dashboard_host, 0))
        port = s.getsockname()[1]
    return {
        "dashboard_port": port,
        "runtime_env": {"env_vars": {"RAY_API_SERVER_ADDRESS": f"http://{dashboard_host}:{port}"}},
    }
