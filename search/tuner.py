"""Build the Ray Tune `Tuner`: Optuna TPE (seeded, define-by-run) + ASHA, one TorchTrainer per trial.

Ray 2.60 rules this follows (details in ../shared/notes/ray-2.60.md):
- metric/mode go on OptunaSearch and TuneConfig, never on ASHAScheduler;
- ASHA counts our 1-based `epoch`, not `training_iteration` (which restarts on resume);
- a trial driver holds a `trial_driver` token, not a CPU, so drivers never starve their own
  Train workers; concurrency is what the cluster's CPUs/GPUs can hold at once.
"""
from __future__ import annotations

import math

from search.optuna_space import YamlSpace
from search.space import SpaceFile

DRIVER_TOKEN = "trial_driver"


def trial_demand(spec: SpaceFile) -> dict[str, float]:
    r = spec.resources
    demand = {"CPU": r.workers_per_trial * r.cpus_per_worker}
    if r.gpus_per_worker:
        demand["GPU"] = r.workers_per_trial * r.gpus_per_worker
    return demand


def concurrency(spec: SpaceFile, cluster: dict[str, float], autoscaling: bool = False) -> int:
    """How many trials run at once: the YAML's number, or what the cluster can hold ('auto').

    On a cluster still waiting for its autoscaler, 'auto' is bounded by the driver tokens only:
    the pending trials' resource requests are what makes the autoscaler add nodes."""
    fits = [] if autoscaling else [math.floor(cluster.get(k, 0) / v + 1e-9) for k, v in trial_demand(spec).items()]
    fits.append(int(cluster.get(DRIVER_TOKEN, 0)))
    n = min(fits)
    wanted = spec.search.max_concurrent_trials
    return max(1, min(n, spec.search.num_samples) if wanted == "auto" else wanted)


def trial_dirname(trial) -> str:
    """Short trial folder names (Tune's default packs every param into the name)."""
    return f"trial_{trial.trial_id}"


def trainable():
    """The trial function with its token resource; Tuner.restore checks that the name matches."""
    from ray import tune

    from trainables.driver import run_trial

    return tune.with_resources(run_trial, {DRIVER_TOKEN: 1})


def restore(exp_dir):
    """Tune restores the searcher (Optuna's past trials), the scheduler and every trial's state."""
    from ray import tune

    return tune.Tuner.restore(str(exp_dir), trainable=trainable(), resume_unfinished=True, resume_errored=False)


def build(spec: SpaceFile, context: dict, storage: str, name: str, max_concurrent: int, callbacks=()):
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    s = spec.search
    startup = s.startup_trials or min(10, max(2, s.num_samples // 3))
    searcher = OptunaSearch(
        YamlSpace({n: k.model_dump() for n, k in spec.knobs.items()}, context),
        metric=s.metric,
        mode=s.mode,
        sampler=optuna.samplers.TPESampler(seed=s.seed, n_startup_trials=startup),
        points_to_evaluate=[dict(p) for p in s.points_to_evaluate] or None,
    )
    scheduler = ASHAScheduler(
        time_attr="epoch",
        max_t=spec.max_epochs(),
        grace_period=s.scheduler.grace_period,
        reduction_factor=s.scheduler.reduction_factor,
    )
    return tune.Tuner(
        trainable(),
        tune_config=tune.TuneConfig(
            metric=s.metric,
            mode=s.mode,
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=s.num_samples,
            max_concurrent_trials=max_concurrent,
            time_budget_s=s.time_budget_s,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage,
            verbose=0,
            callbacks=list(callbacks),
            failure_config=tune.FailureConfig(max_failures=0),
        ),
    )
