"""Start Ray and run a checked search (search/preflight.py) to its end.

`run_search` writes the search's inputs (search/inputs.py; or reads them back, for --resume),
builds or restores the Tuner with its callbacks, runs it, and writes trials.csv; it returns a
`SearchOutcome` for search/outcome.py to print. `start_ray` is public: the bench scripts and
analysis.retrain's refits start Ray with it.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from search import results_folder, resume_checkpoints
from search import study as study_mod
from search import tuner as tuner_mod
from search.cli import resume_command
from search.duration import say
from search.errors import UserError
from search.inputs import INPUT_FILES, warm_cache, write_inputs
from search.location import ResultsLocation
from search.outcome import SearchOutcome
from search.preflight import Preflight
from search.record import SearchRecord
from trainables import ray_internals
from trainables.context import TrialContext
from trainables.storage import remote


def start_ray(address: str | None, verbose: bool):
    """Join a cluster, or start a local one whose trial drivers hold tokens, not CPUs."""
    ray_internals.quiet_env()  # with verbose=0: no banner; the progress lines are ours
    import ray

    if ray.is_initialized():
        return False
    ray_internals.apply_env(local=not address)
    kwargs = dict(log_to_driver=verbose, configure_logging=True, logging_level="INFO" if verbose else "WARNING")
    if not verbose:  # a failed trial's traceback goes to its error.txt; the console gets one line per trial
        import logging

        logging.getLogger(ray_internals.TUNE_CONTROLLER_LOGGER).setLevel(logging.CRITICAL)
        logging.getLogger(ray_internals.EXPERIMENT_ANALYSIS_LOGGER).setLevel(logging.ERROR)
    if address:
        ctx = ray.init(address=address, **kwargs, **ray_internals.init_kwargs(local=False))
    else:  # the dashboard stays on (its State API frees stopped trials' workers) and on localhost
        ctx = ray.init(resources={tuner_mod.DRIVER_TOKEN: 4 * (os.cpu_count() or 1)}, dashboard_host="127.0.0.1",
                       **kwargs, **ray_internals.init_kwargs(local=True, dashboard_host="127.0.0.1"))
    if ctx.dashboard_url:
        print(f"Ray dashboard: http://{ctx.dashboard_url}", flush=True)
    return True


def stop_on_sigterm() -> None:
    """Treat SIGTERM (what `timeout`, systemd, Kubernetes and SLURM send) as Ctrl-C: Tune stops
    the trials, saves its state and returns, the results are written with the unfinished trials
    marked, the --resume command is printed, and the local Ray cluster is shut down."""
    import signal

    signal.signal(signal.SIGTERM, lambda signum, frame: os.kill(os.getpid(), signal.SIGINT))


def warm_start(previous_dir: str, search_alg, spec) -> None:
    """Seed the new study with an earlier search's completed and pruned trials, and queue its best
    configuration as the first trial the sampler gives (after the space's points_to_evaluate)."""
    prev = study_mod.load(previous_dir, results_folder.read_record(previous_dir).name)
    study, dists = ray_internals.study_of(search_alg), study_mod.distributions(spec)
    added, dropped = study_mod.warm_start(study, prev, dists, spec.search.constraints.limits())
    print(f"warm start: {added} finished trials of {previous_dir} seed the sampler"
          + (f"; knobs left out (not in this space, or out of its range): {', '.join(dropped)}" if dropped else ""),
          flush=True)
    rerun = study_mod.rerun_best(study, prev, dists, spec.search.constraints.limits())
    if rerun:
        print("warm start: its best configuration runs again first: "
              + " ".join(f"{k}={v}" for k, v in rerun.items()), flush=True)


def run_search(checked: Preflight) -> SearchOutcome:
    """Run the Tuner on a checked request (its space validated, its data prepared, its results
    folder checked); write trials.csv and return how the search went."""
    import ray

    request, spec, location = checked.request, checked.spec, checked.location
    exp_dir = location.local
    # a resumed search keeps the inputs it started with: above all the same split
    if checked.resumed:
        record, context = checked.resumed
    else:
        record, context = write_inputs(exp_dir, spec, checked.index, checked.name, request.study_storage,
                                       location.results)
        location.upload(INPUT_FILES)  # before any trial: trials on other nodes read the split from there
    cluster = ray.cluster_resources()
    if request.address and location.in_bucket and not remote.is_uri(context.data_root) and not checked.index.source:
        print(f"warning: the images are a folder of this machine ({context.data_root}); trials on other nodes "
              "read them at that path: mount it there too, or put them in the bucket (--data s3://...)", flush=True)
    n = _concurrency(request, spec, cluster)
    warm_cache(spec, context)
    _print_start(record, spec, cluster, n, location)
    tuner = _tuner(checked, context, n)
    print(f"Optuna study, live: optuna-dashboard {record.study_storage}", flush=True)
    started = time.time()
    _start_budget(request, record, exp_dir, spec.search.time)
    try:
        tuner.fit()  # Tune turns a first Ctrl-C into a clean stop, its state saved
    except KeyboardInterrupt:  # a second Ctrl-C: the state saved so far is still there
        pass
    return _finish(checked, record, time.time() - started, n)


def _print_start(record: SearchRecord, spec, cluster: dict, n: int, location: ResultsLocation) -> None:
    asha = record.scheduler  # the search's own settings: a resumed search keeps those it started with
    print(f"Ray cluster: {cluster.get('CPU', 0):g} CPUs, {cluster.get('GPU', 0):g} GPUs; "
          f"{_trials_line(record)}, up to {n} at a time, each {tuner_mod.trial_demand(spec)}; "
          f"ASHA on epoch (max {asha.max_t}, grace {asha.grace_period}, "
          f"reduction {asha.reduction_factor:g}); {_objective_line(record)}")
    print(location.describe(), flush=True)


def _finish(checked: Preflight, record: SearchRecord, elapsed: float, slots: int) -> SearchOutcome:
    """After the Tuner returned: trials.csv, the study closed, the bucket updated."""
    from search import budget

    location = checked.location
    _after_search(location.fetch, why="reading Tune's last records from the bucket failed; "
                  "the table below is this machine's copy's")  # Tune's own records, as it left them
    table, csv_path = results_folder.write_trials_csv(location.local)
    finished = int((table["status"] != "unfinished").sum()) if not table.empty else 0
    cap = record.num_samples
    all_ran = (cap is not None and finished >= cap) or budget.CLOCK.refused
    interrupted = finished < len(table) or not all_ran
    if not interrupted:
        _close_study(checked.request, location.local, record)
    if location.in_bucket and _after_search(location.upload, [csv_path.name, study_mod.JOURNAL_FILE,
                                                              *budget_file(record.time_s)],
                                            why=f"uploading trials.csv failed; it is in {location.local}"):
        csv_path = location.under(csv_path.name)
    return SearchOutcome(checked.request, checked.name, location.results, record, table, csv_path, elapsed,
                         finished, interrupted, slots)


def _after_search(step, *args, why: str) -> bool:
    """Run a bucket STEP once the trials are over: a storage failure then costs a warning, not the
    search's outcome (the trials' own results are in the bucket already)."""
    try:
        step(*args)
        return True
    except remote.StorageError as e:
        print(f"warning: {why} ({e})", file=sys.stderr, flush=True)
        return False


def _trials_line(record: SearchRecord) -> str:
    """'8 trials', 'as many trials as fit in 5m00s', or both bounds, as the start line says them."""
    cap, seconds = record.num_samples, record.time_s
    if seconds is None:
        return f"{cap} trials"
    return (f"trials for {say(seconds)} (at most {cap})" if cap else
            f"as many trials as fit in {say(seconds)}")


def _start_budget(request, record: SearchRecord, exp_dir: Path, time_flag: float | None) -> None:
    """Start the time budget's clock from the command's start; a resumed search gets what its
    budget has left, or --time (TIME_FLAG: the space's search.time, which --time set)."""
    from search import budget

    if not request.resume:
        budget.start(record.time_s, request.started)
        return
    kept = results_folder.read_budget(exp_dir)  # the budget in force when it stopped (a --time of an earlier resume)
    refused = bool(kept.get("refused"))  # Tune restores its searcher finished: no new trials start
    if request.time is not None:
        budget.start(time_flag, request.started, refused=refused)
        print(f"time budget: {say(time_flag)} for the resumed search (--time)"
              + ("; it had stopped starting trials, so only its unfinished trials go on" if refused else ""),
              flush=True)
        return
    seconds, spent = kept.get("time_s", record.time_s), kept.get("spent_s", 0.0)
    budget.start(seconds, request.started, spent=spent, refused=refused)
    if seconds:
        print(f"time budget: {say(max(0.0, seconds - spent))} left of {say(seconds)} (--time gives the resumed "
              "search a new budget)", flush=True)


def _objective_line(record: SearchRecord) -> str:
    """The objective(s), which one ASHA stops trials on, and the constraints, as the start line says
    them (from the search's search.json)."""
    said = results_folder.describe_objectives(record.objective_pairs)
    line = (f"objectives {said} (Optuna's multi-objective TPE; ASHA stops trials on {record.metric})"
            if record.multi_objective else f"objective {said}")
    limits = record.limits
    if limits:
        line += f"; constraints {results_folder.describe_limits(limits)} (a configuration over them is not trained)"
    return line


def _concurrency(request, spec, cluster: dict) -> int:
    """Trials at once; a cluster that can never hold one trial is an error (a local one) or a wait."""
    short = {k: (v, cluster.get(k, 0)) for k, v in tuner_mod.trial_demand(spec).items() if cluster.get(k, 0) < v}
    if short:
        need = ", ".join(f"{v:g} {k} per trial but the cluster has {have:g}" for k, (v, have) in short.items())
        if not request.address:  # nothing will ever add resources to the local cluster
            raise UserError(f"{request.space}: resources: {need}; lower resources.* or join a bigger cluster")
        print(f"warning: {need} now; trials wait until the cluster's autoscaler adds nodes", flush=True)
    if tuner_mod.uses_ray_train(spec) and cluster.get(tuner_mod.DRIVER_TOKEN, 0) < 1:
        raise UserError(f"the Ray cluster has no '{tuner_mod.DRIVER_TOKEN}' resource for trial drivers; "
                        f"start its head with --resources='{{\"{tuner_mod.DRIVER_TOKEN}\": 8}}'")
    return tuner_mod.concurrency(spec, cluster, autoscaling=bool(short))


def _tuner(checked: Preflight, context: TrialContext, n: int):
    """A new Tuner (its searcher writing the live study, warm-started if asked), or the
    interrupted one restored."""
    request, spec, location, name = checked.request, checked.spec, checked.location, checked.name
    if request.resume:
        _print_resuming(checked, context)
        return tuner_mod.restore(location.results, context)  # its callbacks come back with it
    search_alg = tuner_mod.searcher(spec, name, study_mod.storage(location.local, request.study_storage))
    if checked.warm_start_dir:
        warm_start(checked.warm_start_dir, search_alg, spec)
    return tuner_mod.build(spec, context, search_alg, location.storage, name, n, callbacks=_callbacks(checked))


def _print_resuming(checked: Preflight, context: TrialContext) -> None:
    """What a resumed search keeps (the runtime, resources and constraints it started with)."""
    request, spec, location = checked.request, checked.spec, checked.location
    print(f"resuming: {results_folder.describe_trials(checked.state)}; unfinished trials "
          "continue from their last checkpoint", flush=True)
    if context.resources != spec.resources:
        print(f"note: resuming with the resources the search started with ({location.local / 'context.json'}), "
              f"not {request.space}'s", flush=True)
    if context.limits != spec.search.constraints.limits():
        print(f"note: resuming with the constraints the search started with ({context.limits or 'none'}), "
              f"not {request.space}'s", flush=True)
    for line in resume_checkpoints.reconcile(location.results, location.local):
        print(f"note: {line}", flush=True)


def _callbacks(checked: Preflight) -> list:
    """The new search's Tune callbacks: progress lines, the time budget's record, uploads to a
    bucket and its watch, the trials' logs kept whole on a retry, MLflow if asked."""
    from search.progress import ProgressPrinter
    from search.trial_logs import KeepTrialLogs

    request, s, location = checked.request, checked.spec.search, checked.location
    callbacks = [ProgressPrinter(s.asha_metric, s.asha_mode, s.max_trials),
                 *_uploads(location, s.time), KeepTrialLogs()]
    if location.in_bucket:  # a bucket that stops answering for good stops the search, in one line
        from search.storage_watch import StorageWatch

        callbacks.append(StorageWatch(location.results, resume_command(request, checked.name),
                                      quiet=not request.verbose))
    if s.time:  # before the uploads: its first record is there to upload
        from search.budget import SpentRecorder

        callbacks.insert(1, SpentRecorder(location.local))
    if request.mlflow:
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        callbacks.append(MLflowLoggerCallback(tracking_uri=request.mlflow, experiment_name=checked.name,
                                              save_artifact=False))
    return callbacks


def budget_file(time_s: float | None) -> list[str]:
    """[budget.json] for a search with a time budget TIME_S (uploaded with the journal: --resume reads it)."""
    return [results_folder.BUDGET_FILE] if time_s else []


def _uploads(location: ResultsLocation, time_s: float | None) -> list:
    """For results in a bucket: a callback that uploads the study's journal as the search runs,
    so that --resume on another machine finds the sampler's history."""
    if not location.in_bucket:
        return []
    from search.progress import Uploader

    return [Uploader(location.local, location.results, [study_mod.JOURNAL_FILE, *budget_file(time_s)])]


def _close_study(request, exp_dir: Path, record: SearchRecord) -> None:
    """Close the study's trials left RUNNING by a search that ended (see study.close_unfinished)."""
    try:
        url = request.study_storage or (record.study_storage if study_mod.uses_rdb(record.study_storage) else None)
        study_mod.close_unfinished(study_mod.load(exp_dir, record.name, url))
    except Exception as e:  # the study is a view of the search; never worth failing it for
        print(f"warning: could not close the study's unfinished trials: {type(e).__name__}: {e}")


