"""Build the Ray Tune `Tuner`: Optuna TPE (seeded, define-by-run, its study live in a storage) + ASHA.

A trial runs in one of two runtimes (see trainables/trial/driver.py): single-worker trials train in
their own Tune actor, reused from trial to trial, holding the worker's CPUs/GPUs and retried
by Tune's FailureConfig; multi-worker trials (or `resources.use_ray_train`) fit a TorchTrainer,
whose Tune actor holds only a `trial_driver` token (so drivers never starve their own Train
workers) and whose retries are Train's.

Ray 2.60 rules this follows:
- metric/mode go on OptunaSearch and TuneConfig, never on ASHAScheduler; a multi-objective search
  gives OptunaSearch the list and TuneConfig (ASHA, the kept checkpoints) the first objective;
- ASHA counts our 1-based `epoch`, not `training_iteration` (which restarts on resume);
- concurrency is what the cluster's CPUs/GPUs can hold at once.
"""
from __future__ import annotations

import math

from search.optuna_space import YamlSpace
from search.space import SpaceFile
from trainables.context import TrialContext
from trainables.storage import remote

DRIVER_TOKEN = "trial_driver"
AUTOSCALE_CAP = 64  # trials at once on a cluster still scaling up, when the time budget bounds the trials
UNCAPPED_STARTUP = 5  # random trials before TPE, when the time budget bounds the trials


def trial_demand(spec: SpaceFile) -> dict[str, float]:
    r = spec.resources
    demand = {"CPU": r.workers_per_trial * r.cpus_per_worker}
    if r.gpus_per_worker:
        demand["GPU"] = r.workers_per_trial * r.gpus_per_worker
    return demand


def concurrency(spec: SpaceFile, cluster: dict[str, float], autoscaling: bool = False) -> int:
    """How many trials run at once: the YAML's number, or what the cluster can hold ('auto').

    On a cluster still waiting for its autoscaler, 'auto' is bounded by the driver tokens only
    (TorchTrainer trials) or not at all: the pending trials' resource requests are what makes
    the autoscaler add nodes."""
    fits = [] if autoscaling else [math.floor(cluster.get(k, 0) / v + 1e-9) for k, v in trial_demand(spec).items()]
    if uses_ray_train(spec):
        fits.append(int(cluster.get(DRIVER_TOKEN, 0)))
    cap = spec.search.max_trials or AUTOSCALE_CAP
    n = min(fits) if fits else cap
    wanted = spec.search.max_concurrent_trials
    return max(1, min(n, cap) if wanted == "auto" else wanted)


def trial_dirname(trial) -> str:
    """Short trial folder names (Tune's default packs every param into the name)."""
    return f"trial_{trial.trial_id}"


def uses_ray_train(spec: SpaceFile) -> bool:
    """Whether this search's trials fit a TorchTrainer (else each trains in its own Tune actor)."""
    return spec.resources.ray_train


def trainable(context: TrialContext):
    """The trial function with its context and resources; Tuner.restore checks that the name matches."""
    from ray import tune

    from trainables.trial.driver import run_trial

    fn = tune.with_parameters(run_trial, context=context)
    r = context.resources
    if r.ray_train:
        return tune.with_resources(fn, {DRIVER_TOKEN: 1})
    return tune.with_resources(fn, r.per_worker)


def restore(exp_dir, context: TrialContext):
    """Tune restores the searcher (Optuna's past trials), the scheduler and every trial's state."""
    from ray import tune

    from trainables.ray_internals import save_stopped_trial_state

    save_stopped_trial_state()  # a trial whose process died is saved as ERROR (Ray 2.60 left it RUNNING)
    path, filesystem = remote.ray_storage(str(exp_dir))
    return tune.Tuner.restore(path, trainable=trainable(context), resume_unfinished=True,
                              resume_errored=False, storage_filesystem=filesystem)


def yaml_space(spec: SpaceFile) -> YamlSpace:
    """The space's knobs as the Optuna define-by-run function every searcher samples from."""
    return YamlSpace({n: k.model_dump() for n, k in spec.knobs.items()})


def searcher(spec: SpaceFile, name: str, study_storage=None, sampler=None):
    """Optuna TPE over the YAML space, writing its study (named NAME) to STUDY_STORAGE as it runs:
    single- or multi-objective (the study's directions are the space's modes), told which trials
    are over the space's constraints, and with a time budget asking it before each new trial.
    SAMPLER replaces the seeded TPE (bench/anytime.py compares others)."""
    import optuna

    from search import budget
    from search.searcher import EpochOptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    s = spec.search
    startup = s.startup_trials or (min(10, max(2, s.max_trials // 3)) if s.max_trials else UNCAPPED_STARTUP)
    names, modes = zip(*s.objectives)
    return EpochOptunaSearch(
        yaml_space(spec),
        metric=list(names) if len(names) > 1 else names[0],
        mode=list(modes) if len(modes) > 1 else modes[0],
        limits=s.constraints.limits(),
        sampler=sampler or optuna.samplers.TPESampler(seed=s.seed, n_startup_trials=startup),
        points_to_evaluate=[dict(p) for p in s.points_to_evaluate] or None,
        study_name=name,
        storage=study_storage,
        may_start=budget.may_start_trial if s.time else None,
    )


def build(spec: SpaceFile, context: TrialContext, search_alg, storage: str, name: str, max_concurrent: int,
          callbacks=(), trial=None):
    """The search's Tuner; TRIAL replaces the trial function with its resources (bench/anytime.py
    replays recorded trials through the same searcher, scheduler and budget)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from search import budget
    from trainables.ray_internals import save_stopped_trial_state

    save_stopped_trial_state()  # a trial whose process died is saved as ERROR (Ray 2.60 left it RUNNING)
    s = spec.search
    scheduler = ASHAScheduler(
        time_attr="epoch",
        max_t=spec.max_epochs(),
        grace_period=s.scheduler.grace_period,
        reduction_factor=s.scheduler.reduction_factor,
    )
    in_actor = trial is not None or not context.resources.ray_train
    storage_path, storage_filesystem = remote.ray_storage(storage)
    return tune.Tuner(
        trial or trainable(context),
        tune_config=tune.TuneConfig(
            metric=s.asha_metric,
            mode=s.asha_mode,
            search_alg=search_alg,
            scheduler=scheduler,
            num_samples=s.max_trials or -1,  # -1: until the searcher says the time budget is spent
            max_concurrent_trials=max_concurrent,
            trial_dirname_creator=trial_dirname,
            reuse_actors=in_actor,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage_path,
            storage_filesystem=storage_filesystem,
            verbose=0,
            callbacks=list(callbacks),
            stop=budget.BudgetStopper(s.scheduler.grace_period) if s.time else None,
            # a TorchTrainer trial retries inside Train (trainables.trial.driver); not twice
            failure_config=tune.FailureConfig(max_failures=s.max_failures if in_actor else 0),
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=spec.checkpoint.keep, checkpoint_score_attribute=s.asha_metric,
                checkpoint_score_order=s.asha_mode),
        ),
    )
