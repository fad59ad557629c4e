"""A Tune trial is `run_trial(config)`: it trains one configuration in one of two runtimes.

- **A reused Tune actor** (single-worker trials, the default): `fit` runs right here, in the
  Tune trial's own Ray worker process, reporting with `ray.tune.report`. Tune reuses the
  process for the next trial (`TuneConfig(reuse_actors=True)`), so Ray, torch, timm and the
  memory-mapped image cache are paid once per process, not once per trial (bench/overhead.py).
  What a trial allocated is released before the process takes the next one.
- **A Ray Train `TorchTrainer`** (`workers_per_trial > 1`, DDP; or `resources.use_ray_train`):
  this function fits a TorchTrainer whose workers run `fit`, and `TuneReportCallback` forwards
  each report (rank 0's metrics plus a `checkpoint_path`) to Tune. The Train run is named after
  the Tune trial id, under a fixed storage path, so Train restores from its own checkpoints
  when Tune retries or resumes the trial. Ray 2.6x (Train V2) accepts no Trainer inside a
  Tuner, hence a TorchTrainer per trial: about six fresh processes, ~18 s on 2 cores.
"""
from __future__ import annotations

import gc
import time
from typing import Callable


def uses_ray_train(run: dict) -> bool:
    """Whether trials of this search run as a TorchTrainer (else in a reused Tune actor)."""
    return run.get("workers_per_trial", 1) > 1 or bool(run.get("use_ray_train"))


def run_trial(config: dict) -> None:
    if uses_ray_train(config["run"]):
        fit_trainer(train_loop, config)
    else:
        fit_in_actor(config)


def fit_in_actor(config: dict) -> None:
    """Train a single-worker trial in this (reused) Tune actor."""
    import torch

    from trainables.sessions import TuneSession
    from trainables.train_loop import fit

    # What the trial before left behind. Here, not when a trial ends: ASHA stops a trial by an
    # exception raised in its report, and Tune gives the trial's thread only
    # TUNE_FUNCTION_THREAD_TIMEOUT_S to end before it hands the actor to the next trial.
    release_memory()
    cpus = config["run"].get("cpus_per_worker", 1)
    torch.set_num_threads(max(1, int(cpus)))
    fit(config, TuneSession(cpus))


def release_memory() -> None:
    """Free what a finished trial held (model, optimizer, batches) before the actor runs the next:
    reference cycles are collected, glibc gives its freed heap pages back (each trial runs in a
    new Tune runner thread, and the freed memory of its malloc arena otherwise stays with the
    process: over tests/test_trial_runtime's 20 trials the private memory levelled off at 890 MB
    without the trim and at 560 MB with it),
    torch.compile's graphs are dropped, and on a GPU the CUDA cache goes back to the driver."""
    import sys

    if "torch._dynamo" in sys.modules:  # `resources.compile`: drop the last trial's compiled graphs
        sys.modules["torch._dynamo"].reset()
    gc.collect()
    _malloc_trim()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _malloc_trim() -> None:
    """glibc's malloc_trim(0); nothing where the C library is not glibc."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def train_loop(config: dict) -> None:
    """Entry point of each Train worker; imports the loop there, not in the trial actor."""
    from trainables.train_loop import train_loop_per_worker

    train_loop_per_worker(config)


def _lean_trainer_cls():
    from ray.train.torch import TorchTrainer

    class LeanTorchTrainer(TorchTrainer):
        """A TorchTrainer without Train's Ray Data plumbing when the run has no Ray Datasets.

        Train always adds a `DatasetsCallback`, which starts a `DatasetManager` actor (one more
        Python process importing Ray Data, about 1.5 CPU-s) in every run, used or not. Ours
        never pass `datasets`, so it is dropped; with datasets the callbacks are untouched."""

        def _create_default_callbacks(self):
            callbacks = super()._create_default_callbacks()
            if self.datasets:
                return callbacks
            return [c for c in callbacks if type(c).__name__ != "DatasetsCallback"]

    return LeanTorchTrainer


def _tune_report_callback():
    from ray.tune.integration.ray_train import TuneReportCallback

    class HandOverTuneReportCallback(TuneReportCallback):
        """TuneReportCallback whose `after_report` returns once the Tune trial took the report.

        Ray 2.60 race: the stock callback returns as soon as the report is in the trial's queue.
        If the Train run then ends and this trial function returns before Tune fetched that
        last report, the trial's Tune session deadlocks (its main thread blocks for good in
        `Queue.put` of `_TrainSession._report_training_result`, since the function's final
        result already fills the one-slot result queue): the trial hangs, holding its driver
        token. Ray's 2 s default controller poll makes it rare, not impossible: it hangs when
        Tune takes a few seconds to process a result (reproduced with a 6 s Tune callback); the
        0.2 s poll of `search.ray_settings` hit it on the first trial of a bench run. Waiting
        here, in the Train controller, keeps the run from ending until Tune has the report."""

        def after_report(self, run_context, metrics, checkpoint):
            super().after_report(run_context, metrics, checkpoint)
            queue = getattr(self, "_training_actor_item_queue", None)
            try:
                while queue is not None and not queue.empty():
                    time.sleep(0.02)
            except Exception:  # the trial actor, owner of the queue, is gone: nobody to wait for
                pass

    return HandOverTuneReportCallback()


def fit_trainer(loop: Callable[[dict], None], config: dict) -> None:
    """Fit one TorchTrainer running `loop(config)` on each worker, reporting to this Tune trial."""
    import ray.train
    from ray import tune

    TorchTrainer = _lean_trainer_cls()

    run = config["run"]
    gpus = run.get("gpus_per_worker", 0)
    per_worker = {"CPU": run.get("cpus_per_worker", 1)}
    if gpus:
        per_worker["GPU"] = gpus
    trial_id = tune.get_context().get_trial_id()
    TorchTrainer(
        loop,
        train_loop_config=config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=run.get("workers_per_trial", 1), use_gpu=bool(gpus), resources_per_worker=per_worker
        ),
        run_config=ray.train.RunConfig(
            name=f"train-{trial_id}",
            storage_path=run["train_storage"],
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=run.get("keep_checkpoints", 2),
                checkpoint_score_attribute=run["metric"],
                checkpoint_score_order=run["mode"],
            ),
            failure_config=ray.train.FailureConfig(max_failures=run.get("max_failures", 0)),
            callbacks=[_tune_report_callback()],
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),
    ).fit()
