"""Where one `fit` reports: the three runtimes of a trial, behind one small interface.

- `TuneSession`: a single-worker search trial, run directly in its Tune trial actor. Tune reuses
  that actor for trial after trial, so Ray, torch and timm are imported once per process.
- `RayTrainSession`: one worker of a Ray Train `TorchTrainer` (DDP when a trial has several).
- `LocalSession`: in this process, reports kept in `history` (the retrain, tests, benches).

A session gives `fit` its rank and world size, its device, `prepare_model` (DDP wrapping where
there is more than one worker), the checkpoint to restore from, `report(row, save)` (SAVE
writes the checkpoint into a folder; None: a report without one) and `all_sum`, which adds a
tensor over all workers so that every rank reports the same metrics.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import torch


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def anon_memory_mb() -> float:
    """This process's private resident memory in MB (Linux `RssAnon`; 0 where unknown).

    Private, not total RSS: the memory-mapped image cache is file-backed and shared by every
    trial on the node, so it would hide what a trial itself allocated."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def threads_with_idle_cpus(cpus: int, total: float, free: float, cores: int) -> int:
    """A trial's torch threads: its own `cpus` plus an equal share of the `free` CPUs among the
    trials holding the other `total - free` (each holding `cpus`), at most the machine's cores."""
    running = max(1, round((total - free) / cpus))  # this trial included
    return max(1, min(cores, cpus + int(free // running)))


class LocalSession:
    """Runs `fit` in this process: one worker, reports collected in `history`."""

    rank, world_size = 0, 1

    def __init__(self, checkpoint_dir: str | Path | None = None, device: str | None = None):
        self.history: list[dict] = []
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.device = torch.device(device) if device else default_device()

    def prepare_model(self, model):
        return model.to(self.device)

    def restored_dir(self):
        """The folder of the checkpoint to continue from, or None."""
        return None

    @contextlib.contextmanager
    def restored(self):
        """`restored_dir()` for the duration of a `with` block."""
        yield self.restored_dir()

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def epoch_started(self) -> None:
        """Called before each epoch; sessions that share a machine adjust to it here."""

    def sync_buffers(self, model) -> None:
        """Give every worker rank 0's buffers (batch-norm running statistics), as saved."""

    def report(self, row: dict, save) -> None:
        self.history.append(row)
        if self.checkpoint_dir is not None and save is not None:
            save(self.checkpoint_dir)


def _checkpoint_folder(ck):
    """Yield a Ray checkpoint's folder: the stored one itself where it is on a local file system
    (`as_directory` copies nothing then), else a downloaded copy; None for no checkpoint."""
    if ck is None:
        yield None
        return
    with ck.as_directory() as folder:
        yield folder


class TuneSession(LocalSession):
    """Runs `fit` in a Tune trial actor: `ray.tune.report` with a `tune.Checkpoint` every epoch.

    Restores from `tune.get_checkpoint()` (a retry after a failure, or `--resume`). Each report
    also says which process and node trained it, that process's private memory now and when
    the trial started (what earlier trials in the reused process left behind)."""

    def __init__(self, cpus: float = 1):
        import ray
        from ray import tune

        # Ray hides no GPU from an actor that holds none: use one only if this trial holds it
        super().__init__(device="cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu")
        self._ray, self._tune = ray, tune
        self.cpus = max(1, int(cpus))
        self.node_id = ray.get_runtime_context().get_node_id()
        self.memory_at_start = anon_memory_mb()

    def epoch_started(self) -> None:
        """Train this epoch on the trial's CPUs plus its share of the machine's idle ones.

        At the end of a search fewer trials run than the machine has cores (the last trial
        often runs alone for minutes); the CPUs Ray has not handed out are then shared out as
        torch threads among the trials running. Only on a one-machine cluster, where Ray's
        free CPUs are this machine's; checked at each epoch, so when another trial starts it
        gets its cores back within an epoch."""
        if self.device.type != "cpu" or sum(1 for n in self._ray.nodes() if n.get("Alive")) != 1:
            return
        total = self._ray.cluster_resources().get("CPU", 0)
        free = self._ray.available_resources().get("CPU", 0)
        torch.set_num_threads(threads_with_idle_cpus(self.cpus, total, free, os.cpu_count() or 1))

    @contextlib.contextmanager
    def restored(self):
        yield from _checkpoint_folder(self._tune.get_checkpoint())

    def report(self, row: dict, save) -> None:
        row = {**row, "node_id": self.node_id, "worker_pid": os.getpid(), "worker_memory_mb": anon_memory_mb(),
               "worker_memory_at_start_mb": self.memory_at_start}
        if save is None:
            self._tune.report(row)
            return
        with tempfile.TemporaryDirectory() as tmp:
            save(tmp)
            self._tune.report(row, checkpoint=self._tune.Checkpoint.from_directory(tmp))


class RayTrainSession:
    """Runs `fit` inside a Ray Train worker: `ray.train.report` with a checkpoint every epoch."""

    def __init__(self):
        import ray
        import ray.train
        import ray.train.torch

        self._train = ray.train
        ctx = ray.train.get_context()
        self.rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        self._prepare = ray.train.torch.prepare_model
        self.node_id = ray.get_runtime_context().get_node_id()

    def prepare_model(self, model):
        return self._prepare(model)

    def epoch_started(self) -> None:
        pass

    def sync_buffers(self, model) -> None:
        """Each rank's last training step updated its own running statistics; rank 0's are the
        ones its checkpoint saves, so every rank evaluates with those."""
        if self.world_size > 1:
            import torch.distributed as dist

            for buf in model.buffers():
                dist.broadcast(buf, src=0)

    @contextlib.contextmanager
    def restored(self):
        yield from _checkpoint_folder(self._train.get_checkpoint())

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def report(self, row: dict, save) -> None:
        row = {**row, "node_id": self.node_id, "worker_pid": os.getpid(), "worker_memory_mb": anon_memory_mb()}
        with tempfile.TemporaryDirectory() as tmp:
            ck = None
            if self.rank == 0 and save is not None:
                save(tmp)
                ck = self._train.Checkpoint.from_directory(tmp)
            self._train.report(row, checkpoint=ck)  # every rank reports; Tune takes rank 0's
