"""A Tune trial is this function: it builds and fits one Ray Train `TorchTrainer`.

Ray 2.6x (Train V2) no longer accepts a Trainer inside a Tuner; instead each trial fits its
own TorchTrainer, and `TuneReportCallback` forwards each worker report (rank 0's metrics plus
a `checkpoint_path`) to Tune. The Train run is named after the Tune trial id, under a fixed
absolute storage path, so that Train restores from its own checkpoints when Tune retries or
resumes the trial.
"""
from __future__ import annotations


def run_trial(config: dict) -> None:
    import ray.train
    from ray import tune
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from trainables.train_loop import train_loop_per_worker

    run = config["run"]
    gpus = run.get("gpus_per_worker", 0)
    per_worker = {"CPU": run.get("cpus_per_worker", 1)}
    if gpus:
        per_worker["GPU"] = gpus
    trial_id = tune.get_context().get_trial_id()
    TorchTrainer(
        train_loop_per_worker,
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
            callbacks=[TuneReportCallback()],
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),
    ).fit()
