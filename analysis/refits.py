"""The final model's refits (analysis.retrain): one after another in this process, or side by side
as Ray tasks.

A refit trains the best trial's configuration on train+val. On a Ray cluster (`--address`, or a
Ray this process already uses) that holds two or more refits at once, each with the trial's own
resources (`Resources.per_worker`: its CPUs, and its GPU when it has one), they run as Ray
tasks, side by side; on this machine alone, only where each needs a GPU and two refits' GPU
shares are here (a multi-GPU machine, or one GPU that `gpus_per_worker: 0.25` shares). Each task
returns its model folder's files and its reports, and this process writes them into
out/refits/K, so a refit trained on another node lands where one trained here does. Otherwise,
or with `serial`, they run in this process one after another, and Ray is not started at all: on
CPUs alone a refit here trains with torch on every core, so one already fills the machine, and
tasks would only split the same cores and add Ray's start (bench/retrain_parallel.py measured
them 1.5 times slower on 2 cores). Before they start, `estimate_line` says how long they should
take, from the trial's own measured epochs.
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from search import results_folder


def refit_config(config: dict, history: pd.DataFrame, epochs: int, seed_offset: int) -> tuple[dict, list | None]:
    """The trial's configuration, refit: the same planned epochs (so cosine and the unfreezing
    run as they did), another seed; and the trial's LRs of epochs 1 to EPOCHS, to replay."""
    by_epoch = dict(zip(history["epoch"], history["lr"])) if {"epoch", "lr"} <= set(history) else {}
    lrs = [float(by_epoch[e]) if e in by_epoch else None for e in range(1, epochs + 1)]  # None: the schedule's own
    planned = max(int(config["epochs"]), epochs)  # --epochs beyond the trial's plan extends it
    return {**config, "epochs": planned, "seed": int(config.get("seed", 0)) + seed_offset}, (lrs if by_epoch else None)


def refit(config: dict, context, history: pd.DataFrame, epochs: int, seed_offset: int,
          model_dir: Path, device: str | None = None) -> list[dict]:
    """Train the refit on train+val into MODEL_DIR, stopped after EPOCHS; return its per-epoch reports.
    DEVICE: where it trains (default: a GPU if this process sees one, else the CPU)."""
    from trainables.trial import checkpoint
    from trainables.trial.plan import TrialPlan
    from trainables.trial.sessions import LocalSession
    from trainables.trial.train_loop import fit

    session = LocalSession(checkpoint_dir=model_dir, device=device)
    refit_params, lr_path = refit_config(config, history, epochs, seed_offset)
    fit(refit_params, context, session, TrialPlan.for_refit(stop_after_epoch=epochs, lr_path=lr_path))
    (Path(model_dir) / checkpoint.TRAIN_STATE).unlink(missing_ok=True)  # optimizer state: not part of the model
    return session.history


def refit_task(config: dict, context, history: pd.DataFrame, epochs: int, seed_offset: int) -> dict:
    """The body of one refit as a Ray task: train in a temporary folder with torch threads = the
    task's CPUs, on the GPU only if Ray gave the task one; return the folder's files (bytes, so
    that they come back from any node), the reports, and when training started and ended."""
    import socket
    import tempfile

    import ray
    import torch

    torch.set_num_threads(max(1, int(context.resources.cpus_per_worker)))
    device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as folder:
        started = time.time()
        reports = refit(config, context.on_this_machine(), history, epochs, seed_offset, Path(folder), device)
        ended = time.time()
        files = {p.name: p.read_bytes() for p in Path(folder).iterdir() if p.is_file()}
    return {"files": files, "reports": reports, "started": started, "ended": ended, "ran_as": "ray task",
            "node": socket.gethostname(), "ray_node_id": ray.get_runtime_context().get_node_id()}


@dataclass(frozen=True)
class Plan:
    """How the refits run: AT_ONCE side by side as Ray tasks (0: in this process, one after
    another); OWNS_RAY: this process started the Ray it uses, and shuts it down afterwards."""

    at_once: int = 0
    owns_ray: bool = False
    why: str = ""  # why in this process, where it was not asked for (--serial)

    def describe(self) -> str:
        if not self.at_once:
            return "one after another in this process" + (f" ({self.why})" if self.why else "")
        return f"{self.at_once} at a time as Ray tasks" if self.at_once > 1 else "one at a time as a Ray task"


def fitting(capacity: dict[str, float], demand: dict[str, float]) -> int:
    """How many refits each needing DEMAND (Ray resources) fit in CAPACITY at once."""
    return min((int(capacity.get(name, 0) / need + 1e-9) for name, need in demand.items() if need > 0), default=0)


def local_capacity() -> dict[str, float]:
    """At most what a local Ray started here would have: this machine's cores and GPUs."""
    import torch

    return {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}


ONE_FILLS_CPUS = ("on CPUs alone one refit here trains on all of this machine's cores; --address joins a Ray "
                  "cluster that holds several side by side")


def local_at_once(capacity: dict[str, float], demand: dict[str, float]) -> tuple[int, str]:
    """How many refits a local Ray started here should run at once (0: none, train them in this
    process), and why not where 0. Only refits that each need a GPU: on CPUs alone the in-process
    refit already trains on every core."""
    if not demand.get("GPU"):
        return 0, ONE_FILLS_CPUS
    at_once = fitting(capacity, demand)
    return (at_once, "") if at_once >= 2 else (0, f"this machine holds fewer than two refits of {demand} at once")


def _connected() -> bool:
    """Whether this process already uses a Ray (a library caller's, a test's): never without importing it."""
    ray = sys.modules.get("ray")
    return bool(ray and ray.is_initialized())


def plan(context, refits: int, address: str | None = None, serial: bool = False) -> Plan:
    """Decide how REFITS refits run, starting or joining Ray (ADDRESS) only where they can run
    side by side: two or more at once on the cluster, by `ray.cluster_resources()` against the
    trial's own resources. A Ray this process already uses is used as it is; on this machine
    alone, see `local_at_once`. Joining a cluster (ADDRESS) sends them there even one at a time:
    this machine may lack what the trial trained on."""
    demand = context.resources.per_worker
    if serial or refits < 2 and not address:
        return Plan()
    if not address and not _connected():
        at_once, why = local_at_once(local_capacity(), demand)
        if not at_once:
            return Plan(why=why)  # no Ray to start
    import ray

    from search.launch import start_ray

    owns_ray = start_ray(address, verbose=False)
    capacity = ray.cluster_resources()
    at_once = min(refits, fitting(capacity, demand))
    if at_once >= 2 or address and at_once >= 1:
        return Plan(at_once, owns_ray)
    if owns_ray:
        ray.shutdown()
    if address:
        raise results_folder.ResultsError(f"--address {address}: the cluster has no room for one refit "
                                          f"({demand} each; it has {capacity})")
    return Plan(why=f"the Ray in use holds fewer than two refits of {demand} at once")


def release(chosen: Plan) -> None:
    """Shut down the Ray this process started for the refits (a cluster it joined: disconnect)."""
    if chosen.owns_ray:
        import ray

        ray.shutdown()


def epoch_seconds(history: pd.DataFrame) -> float | None:
    """The median of the trial's epoch times on train (Tune's `time_this_iter_s`, else the
    differences of `time_total_s`); None where its reports have neither."""
    if "time_this_iter_s" in history and history["time_this_iter_s"].notna().any():
        times = history["time_this_iter_s"]
    elif "time_total_s" in history and history["time_total_s"].notna().any():
        total = history["time_total_s"].dropna()
        times = total.diff().fillna(total.iloc[0])
    else:
        return None
    return float(times.dropna().median())


def estimate_line(history: pd.DataFrame, context, epochs: int, refits: int, chosen: Plan) -> str:
    """One line, printed before the refits start: how many, how they run, and about how long,
    estimated from the trial's own epochs: EPOCHS × its median epoch × (train+val images /
    train images) × rounds (ceil(REFITS / at once)), × its workers where it trained with several."""
    from search.duration import say
    from trainables.data import dataset

    head = f"refits: {refits} on train+val, {chosen.describe()}"
    per_epoch = epoch_seconds(history)
    if per_epoch is None:
        return f"{head}; no estimate (the trial's reports have no epoch times)"
    splits = [item.split for item in dataset.read_split(context.split_file, ("train", "val"))]
    images = len(splits) / max(1, splits.count("train"))
    rounds = math.ceil(refits / max(1, chosen.at_once))
    workers = context.resources.workers_per_trial
    seconds = epochs * per_epoch * images * rounds * workers
    took = f"{per_epoch:.1f}s" if per_epoch < 10 else say(per_epoch)
    on = f"on train with {workers} workers, a refit has one" if workers > 1 else "on train"
    return (f"{head}; about {say(seconds)}, estimated from the trial's own epochs ({took} each {on}; "
            f"{epochs} epoch(s) × {images:.2f} for val's images too × {rounds} round(s))")


def run_refits(chosen: Plan, config: dict, context, history: pd.DataFrame, epochs: int, offsets: list[int],
               out: Path) -> list[dict]:
    """Train one refit per seed offset in OFFSETS into out/refits/K, as CHOSEN says; return, per
    refit, its reports and where and when it trained (`started`/`ended`, wall-clock seconds)."""
    for k, offset in enumerate(offsets):
        print(f"refit {k + 1}: train+val, seed +{offset}, {epochs} epoch(s) of {config['epochs']} planned, the "
              "trial's LR path replayed", flush=True)
    if not chosen.at_once:
        return [_in_process(config, context, history, epochs, offset, out / "refits" / str(k))
                for k, offset in enumerate(offsets)]
    return _as_tasks(config, context, history, epochs, offsets, out)


def _in_process(config: dict, context, history: pd.DataFrame, epochs: int, offset: int, model_dir: Path) -> dict:
    """One refit trained here, timed like a task's."""
    import socket

    started = time.time()
    reports = refit(config, context, history, epochs, offset, model_dir)
    return {"reports": reports, "started": started, "ended": time.time(), "ran_as": "in process",
            "node": socket.gethostname()}


def _as_tasks(config: dict, context, history: pd.DataFrame, epochs: int, offsets: list[int], out: Path) -> list[dict]:
    """The refits as Ray tasks, each holding the trial's resources; their folders written here.
    If one fails, the others are cancelled and its error is raised."""
    import ray

    resources = context.resources
    task = ray.remote(refit_task).options(num_cpus=resources.cpus_per_worker, num_gpus=resources.gpus_per_worker)
    pending = [task.remote(config, context, history, epochs, offset) for offset in offsets]
    results = []
    try:
        for k, ref in enumerate(pending):
            result = ray.get(ref)
            model_dir = out / "refits" / str(k)
            model_dir.mkdir(parents=True, exist_ok=True)
            for name, content in result.pop("files").items():
                (model_dir / name).write_bytes(content)
            results.append(result)
    except BaseException:
        for ref in pending:
            ray.cancel(ref)
        raise
    return results
