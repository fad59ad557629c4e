"""A Tune trial is `run_trial(config, context)`: it trains one configuration in one of two runtimes.

CONFIG holds the trial's hyperparameters, CONTEXT (`trainables.context.TrialContext`, given by
`tune.with_parameters`) what the whole search shares. This module picks the runtime and
starts it; the train loop only sees a session (`trainables.trial.sessions`).

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
  Tuner, hence a TorchTrainer per trial: about six fresh processes (bench/README.md).
"""
from __future__ import annotations

import gc

from trainables import ray_internals
from trainables.context import TrialContext
from trainables.storage import remote


def run_trial(config: dict, context: TrialContext) -> None:
    """The Tune trial: CONFIG is the trial's hyperparameters, CONTEXT comes by `tune.with_parameters`."""
    if context.resources.ray_train:
        fit_trainer(config, context)
    else:
        fit_in_actor(config, context)


def fit_in_actor(config: dict, context: TrialContext) -> None:
    """Train a single-worker trial in this (reused) Tune actor."""
    import torch

    from trainables.trial.sessions import TuneSession
    from trainables.trial.train_loop import fit

    # What the trial before left behind. Here, not when a trial ends: ASHA stops a trial by an
    # exception raised in its report, and Tune gives the trial's thread only
    # TUNE_FUNCTION_THREAD_TIMEOUT_S to end before it hands the actor to the next trial.
    release_memory()
    cpus = context.resources.cpus_per_worker
    torch.set_num_threads(max(1, int(cpus)))
    fit(config, context, TuneSession(cpus))


def release_memory() -> None:
    """Free what a finished trial held (model, optimizer, batches) before the actor runs the next:
    reference cycles are collected, glibc gives its freed heap pages back (each trial runs in a
    new Tune runner thread, and the freed memory of its malloc arena otherwise stays with the
    process; bench/README.md has the figures), torch.compile's graphs are dropped, and on a GPU
    the CUDA cache goes back to the driver."""
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


def train_loop(loop_config: dict) -> None:
    """Entry point of each Train worker; imports the loop there, not in the trial actor."""
    from trainables.trial.train_loop import train_loop_per_worker

    train_loop_per_worker(loop_config)


def fit_trainer(config: dict, context: TrialContext, loop=train_loop) -> None:
    """Fit one TorchTrainer whose workers run LOOP (`fit`, by default) on
    `{"config": CONFIG, "context": CONTEXT}`, reporting to this Tune trial."""
    import ray.train
    from ray import tune

    r = context.resources
    trial_id = tune.get_context().get_trial_id()
    storage_path, storage_filesystem = remote.ray_storage(context.train_storage)
    ray_internals.lean_torch_trainer()(
        loop,
        train_loop_config={"config": config, "context": context},
        scaling_config=ray.train.ScalingConfig(
            num_workers=r.workers_per_trial, use_gpu=bool(r.gpus_per_worker), resources_per_worker=r.per_worker),
        run_config=ray.train.RunConfig(
            name=f"train-{trial_id}",
            storage_path=storage_path,
            storage_filesystem=storage_filesystem,
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=context.keep_checkpoints,
                checkpoint_score_attribute=context.metric,
                checkpoint_score_order=context.mode,
            ),
            failure_config=ray.train.FailureConfig(max_failures=context.max_failures),
            callbacks=[ray_internals.hand_over_report_callback()],
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),
    ).fit()
