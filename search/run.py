"""`python -m search.run SPACE.yaml`: validate the space, split the data once, run the search.

Everything that can be wrong with the input is checked before Ray starts, and reported as one
line on stderr with exit code 2. The results folder gets, besides Ray's own trial folders,
the resolved space, the split, a data summary and `trials.csv`.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

from search import remote_results, results_folder, resume_checkpoints
from search import space as space_mod
from search import study as study_mod
from search import tuner as tuner_mod
from search.duration import parse_duration, say
from trainables import cache_budget, data, ray_internals, remote
from trainables.context import CONTEXT_FILE, FOOTPRINTS_DIR, TRAIN_RUNS, TrialContext
from trainables.params import TrialParams

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # as a shell reports a Ctrl-C


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m search.run", description=__doc__.splitlines()[0])
    p.add_argument("space", help="YAML search space, e.g. spaces/finetune.yaml")
    p.add_argument("--data", help="image folder (class subfolders, or train/ val/ test/), or a bucket's prefix of "
                   "them (s3://bucket/images/), instead of data.source")
    p.add_argument("--storage", default="results",
                   help="where results go (default: results/): a folder, or a bucket (s3://bucket/results, gs://...) "
                        "on a cluster without a shared file system")
    p.add_argument("--time", metavar="DURATION",
                   help="the search's time budget, e.g. 10m, 90s, 1h30m (instead of search.time): trials start "
                        "while they can reach their first rung in it; with --resume, the time the resumed search "
                        "gets (default: what its budget has left)")
    p.add_argument("--name", help="experiment name; results in STORAGE/NAME (default: the space's name or file name)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a space entry, e.g. --set search.num_samples=4 --set data.limit_per_class=20")
    p.add_argument("--address", help="Ray cluster to join ('auto' on a cluster node); default: start one here")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted search in STORAGE/NAME: finished trials are kept, unfinished ones "
                        "continue from their last checkpoint, the sampler keeps its history")
    p.add_argument("--study-storage", metavar="URL",
                   help="write the Optuna study to this RDB (e.g. postgresql://host/db, sqlite:///study.db) "
                        "instead of RESULTS/optuna.journal")
    p.add_argument("--warm-start", metavar="RESULTS_DIR",
                   help="seed the sampler with an earlier search's finished trials (same data; knobs that "
                        "this space lacks, or whose value is out of its range, are dropped)")
    p.add_argument("--mlflow", metavar="URI", help="also log every trial to MLflow at this tracking URI "
                   "(e.g. sqlite:///mlflow.db; needs `pip install mlflow`)")
    p.add_argument("--dry-run", action="store_true",
                   help="validate and print the resolved space and data; start no Ray")
    p.add_argument("--verbose", action="store_true", help="also show Ray's and the workers' own logs")
    return p.parse_args(argv)


def _abs_storage(storage: str) -> str:
    """A URI as it is (its bucket named); a folder absolute, because trials run in Ray's own
    working directories."""
    if re.match(r"^[a-z][a-z0-9+.-]*:/(?!/)", storage):  # s3:/bucket: a URI with one slash, not a folder 's3:'
        raise space_mod.SpaceError(f"--storage {storage}: a URI takes two slashes, e.g. s3://BUCKET/PREFIX")
    if remote.is_uri(storage):
        try:  # a URI pyarrow cannot open (or one naming no bucket) is refused here, before anything runs
            remote.split(storage)
        except remote.StorageError as e:
            raise space_mod.SpaceError(f"--storage {e}") from None
        return storage.rstrip("/")
    return str(Path(storage).expanduser().resolve())


def results_location(args, name: str) -> str:
    """Where the search keeps its results folder: STORAGE/NAME, a folder or a URI."""
    storage = _abs_storage(args.storage)
    return remote.join(storage, name) if remote.is_uri(storage) else str(Path(storage) / name)


def _under(results: str, name: str) -> str:
    """RESULTS/NAME, for a folder or a URI."""
    return remote.join(results, name) if remote.is_uri(results) else str(Path(results) / name)


def prepare(args) -> tuple:
    """Validate the space and prepare the data. Raises SpaceError/DataError/ModelError, nothing started."""
    overrides = list(args.overrides) + ([f"data.source={json.dumps(args.data)}"] if args.data else [])
    if args.time is not None:
        try:
            overrides.append(f"search.time={parse_duration(args.time)}")
        except ValueError as e:
            raise space_mod.SpaceError(f"--time: {e} (got {args.time!r})") from None
    spec = space_mod.load(args.space, overrides)
    _abs_storage(args.storage)
    name = args.name or spec.name or Path(args.space).stem
    d = spec.data
    try:
        cache_budget.cap_bytes(d.cache_max_gb)  # a bad HPO_CACHE_MAX_GB is found before anything starts
    except cache_budget.CacheFull as e:
        raise space_mod.SpaceError(str(e)) from None
    index = data.prepare(d.source, d.split.model_dump(exclude={"seed"}), d.split.seed, d.limit_per_class, d.cache_dir,
                         d.conflicting_labels, stream=sys.stdout)
    space_mod.check_classes(args.space, spec, index.classes)
    space_mod.check_pretrained_weights(args.space, spec)
    return spec, name, index


def print_data_summary(summ: dict) -> None:
    """The data report: what was found, how it is split, and everything that was skipped or odd."""
    c = summ["counts"]
    print(f"data: {summ['root']} — {summ['images']} images, {len(summ['classes'])} classes"
          f"{' (pre-split)' if summ['presplit'] else ''}, imbalance ratio {summ['imbalance_ratio']}")
    width = max(len(k) for k in summ["classes"])
    print(f"  {'class':<{width}}  " + "  ".join(f"{s:>5}" for s in data.SPLITS))
    for k in summ["classes"]:
        print(f"  {k:<{width}}  " + "  ".join(f"{c[s][k]:>5}" for s in data.SPLITS))
    print(f"  {'total':<{width}}  " + "  ".join(f"{sum(c[s].values()):>5}" for s in data.SPLITS))
    dup = summ["duplicates"]
    if dup["duplicate_groups"]:
        print(f"  {dup['duplicate_images']} byte-identical images in {dup['duplicate_groups']} groups, "
              f"{dup['groups_across_splits']} groups across splits (each group is kept in one split)")
    conflicts = summ["conflicting_labels"]
    if conflicts["groups"]:
        what = ("dropped (their label is unknowable; data.conflicting_labels: keep keeps them)" if conflicts["dropped"]
                else "kept, each copy with its own label, all copies in one split (data.conflicting_labels: keep)")
        print(f"  {conflicts['images']} identical images in {conflicts['groups']} groups carry different labels, "
              f"{what}:")
        for group in conflicts["examples"][:10]:
            print("    " + " = ".join(f"{g['path']} ({g['label']})" for g in group))
        if conflicts["groups"] > 10:
            print(f"    ... {conflicts['groups'] - 10} more groups in data.json")
    ignored = summ.get("ignored", [])
    for why in sorted({i["why"] for i in ignored}):
        paths = [i["path"] for i in ignored if i["why"] == why]
        print(f"  ignored {len(paths)} ({why}): " + "; ".join(paths[:5]) + (" ..." if len(paths) > 5 else ""))
    for label, paths in (("non-image files", summ["skipped_non_images"]),
                         ("unreadable images",
                          [f"{u['path']} ({u['error'][:160]})" for u in summ["unreadable_images"]])):
        if paths:
            print(f"  skipped {len(paths)} {label}: " + "; ".join(paths[:5]) + (" ..." if len(paths) > 5 else ""))


# what write_inputs saves
INPUT_FILES = ["space.yaml", "split.csv", "data.json", results_folder.SEARCH_FILE, CONTEXT_FILE]


def write_inputs(exp_dir: Path, spec, index, name: str, study_url: str | None = None, results: str = "") -> dict:
    """Save what the search used, before it starts: resolved space, split, data summary, search info,
    into EXP_DIR (this machine's copy, when the search keeps its RESULTS in a bucket).

    search.json also holds, resolved, what analysis needs of the space (each knob's Optuna
    distribution, ASHA's settings, GPUs per trial): analysis reads it, never the space again."""
    from optuna.distributions import distribution_to_json

    exp_dir.mkdir(parents=True, exist_ok=True)
    (exp_dir / "space.yaml").write_text(space_mod.describe(spec))
    data.save_split(index, exp_dir / "split.csv")
    summ = data.summary(index)
    (exp_dir / "data.json").write_text(json.dumps(summ, indent=2))
    info = {
        "name": name, "metric": spec.search.asha_metric, "mode": spec.search.asha_mode,
        "objectives": spec.search.objectives, "limits": spec.search.constraints.limits(),
        "knobs": [k for k, kb in spec.knobs.items() if kb.kind != "const"],
        "data_root": index.location, "split_file": _under(results or str(exp_dir), "split.csv"),
        "class_names": index.classes, "results": results or str(exp_dir),
        "max_epochs": spec.max_epochs(), "num_samples": spec.search.max_trials, "time_s": spec.search.time,
        "study_storage": study_mod.storage_label(exp_dir, study_url),
        "distributions": {k: json.loads(distribution_to_json(d)) for k, d in study_mod.distributions(spec).items()},
        "scheduler": {"max_t": spec.max_epochs(), "grace_period": spec.search.scheduler.grace_period,
                      "reduction_factor": spec.search.scheduler.reduction_factor},
        "gpus_per_trial": spec.resources.workers_per_trial * spec.resources.gpus_per_worker,
    }
    (exp_dir / results_folder.SEARCH_FILE).write_text(json.dumps(info, indent=2))
    (exp_dir / study_mod.JOURNAL_FILE).unlink(missing_ok=True)  # a study of a search killed before it began
    return info


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


def check_results_dir(args, name: str) -> tuple[Path, dict | None]:
    """STORAGE/NAME must be new, or hold an unfinished search when --resume is given. In a bucket:
    writable, and read through this machine's copy (returned)."""
    results = results_location(args, name)
    exp_dir = Path(results)
    if remote.is_uri(results):
        try:
            remote.check_writable(results)
            exp_dir = remote_results.pull(results)
        except remote.StorageError as e:
            raise space_mod.SpaceError(f"--storage {e}") from None
    state = results_folder.search_state(exp_dir)
    if state and not args.resume:
        hint = ("add --resume to continue it" if state["unfinished"]
                else "pick another --name, or delete that folder")
        raise space_mod.SpaceError(f"{results} already holds a search ({results_folder.describe_trials(state)}); "
                                   f"{hint}")
    if args.resume and not state:
        raise space_mod.SpaceError(f"--resume: {results} holds no search to resume")
    if args.resume:
        try:
            results_folder.read_context(exp_dir)  # before Ray starts
        except results_folder.ResultsError as e:
            raise space_mod.SpaceError(f"--resume: {e}") from None
        if args.time is not None and not results_folder.read_search_info(exp_dir).get("time_s"):
            raise space_mod.SpaceError(f"--time: the search in {results} ran without a time budget; resume it "
                                       "without --time (it runs its remaining trials)")
    return exp_dir, state


def warm_start(previous_dir: str, search_alg, spec) -> None:
    """Seed the new study with an earlier search's completed and pruned trials, and queue its best
    configuration as the first trial the sampler gives (after the space's points_to_evaluate)."""
    prev = study_mod.load(previous_dir, results_folder.read_search_info(previous_dir))
    study, dists = ray_internals.study_of(search_alg), study_mod.distributions(spec)
    added, dropped = study_mod.warm_start(study, prev, dists, spec.search.constraints.limits())
    print(f"warm start: {added} finished trials of {previous_dir} seed the sampler"
          + (f"; knobs left out (not in this space, or out of its range): {', '.join(dropped)}" if dropped else ""),
          flush=True)
    rerun = study_mod.rerun_best(study, prev, dists, spec.search.constraints.limits())
    if rerun:
        print("warm start: its best configuration runs again first: "
              + " ".join(f"{k}={v}" for k, v in rerun.items()), flush=True)


def check_study_options(args, name: str, spec) -> None:
    """--warm-start and --study-storage are checked before Ray starts."""
    if args.warm_start and args.resume:
        raise space_mod.SpaceError("--warm-start: a resumed search keeps its own study; drop --warm-start")
    if args.warm_start and remote.is_uri(args.warm_start):  # an earlier search in a bucket: its records, here
        try:
            args.warm_start = str(remote_results.pull(args.warm_start.rstrip("/")))
        except remote.StorageError as e:
            raise space_mod.SpaceError(f"--warm-start {e}") from None
    if args.warm_start:
        _check_warm_start(args.warm_start, spec)
    if args.study_storage and not args.resume:
        _check_study_storage(args.study_storage, name)


def _check_warm_start(previous_dir: str, spec) -> None:
    try:
        prev = results_folder.read_search_info(previous_dir)
    except results_folder.ResultsError as e:
        raise space_mod.SpaceError(f"--warm-start: {e}") from None
    if study_mod.uses_rdb(prev):
        raise space_mod.SpaceError(f"--warm-start {previous_dir}: its study is in a database "
                                   f"({prev['study_storage']}); warm start reads a results folder's "
                                   f"{study_mod.JOURNAL_FILE}")
    try:
        study_mod.load(previous_dir, prev)
    except Exception as e:  # no study in it, or one Optuna cannot read
        raise space_mod.SpaceError(f"--warm-start {previous_dir}: no readable Optuna study "
                                   f"({type(e).__name__}: {e})") from None
    if results_folder.objectives(prev) != spec.search.objectives:
        raise space_mod.SpaceError(f"--warm-start {previous_dir}: that search optimised "
                                   f"{results_folder.describe_objectives(results_folder.objectives(prev))}, this "
                                   f"one {results_folder.describe_objectives(spec.search.objectives)}; its scores "
                                   "would mislead the sampler")


def _check_study_storage(url: str, name: str) -> None:
    import optuna

    try:
        shown = study_mod.storage_label(None, url)
        names = optuna.get_all_study_names(study_mod.storage(None, url))
    except Exception as e:  # a bad URL, a missing driver, a database that does not answer
        raise space_mod.SpaceError(f"--study-storage: cannot open it ({type(e).__name__}: "
                                   f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if name in names:
        raise space_mod.SpaceError(f"--study-storage {shown}: a study named {name!r} is already there; "
                                   "pick another --name")


def run_search(args, spec, name: str, index, checked: tuple[Path, dict | None]):
    """Run the Tuner on a validated space and prepared data, in the results folder CHECKED (what
    check_results_dir returned); return the trials table, and whether the search was interrupted
    (Ctrl-C) before all its trials ran."""
    import ray

    from search import budget

    exp_dir, state = checked
    results = results_location(args, name)
    # a resumed search keeps the inputs it started with: above all the same split
    info = (results_folder.read_search_info(exp_dir) if args.resume
            else write_inputs(exp_dir, spec, index, name, args.study_storage, results))
    if args.resume:
        context = results_folder.read_context(exp_dir)
    else:
        context = trial_context(spec, index.location, index.classes, info["split_file"], results)
        context.save(exp_dir)
        if remote.is_uri(results):  # before any trial: trials on other nodes read the split from there
            remote_results.push(exp_dir, results, INPUT_FILES)
    cluster = ray.cluster_resources()
    if args.address and remote.is_uri(results) and not remote.is_uri(context.data_root) and not index.source:
        print(f"warning: the images are a folder of this machine ({context.data_root}); trials on other nodes "
              "read them at that path: mount it there too, or put them in the bucket (--data s3://...)", flush=True)
    n = _concurrency(args, spec, cluster)
    warm_cache(spec, context)
    asha = info["scheduler"]  # the search's own settings: a resumed search keeps those it started with
    print(f"Ray cluster: {cluster.get('CPU', 0):g} CPUs, {cluster.get('GPU', 0):g} GPUs; "
          f"{_trials_line(info)}, up to {n} at a time, each {tuner_mod.trial_demand(spec)}; "
          f"ASHA on epoch (max {asha['max_t']}, grace {asha['grace_period']}, "
          f"reduction {asha['reduction_factor']:g}); {_objective_line(info)}")
    print(f"results: {results}" + (f" (this machine's copy: {exp_dir})" if results != str(exp_dir) else ""),
          flush=True)
    tuner = _tuner(args, spec, name, exp_dir, state, context, n, results)
    if info.get("study_storage"):  # absent from an older results folder's search.json: no study to show
        print(f"Optuna study, live: optuna-dashboard {info['study_storage']}", flush=True)
    started = time.time()
    _start_budget(args, info, exp_dir, spec.search.time)
    try:
        tuner.fit()  # Tune turns a first Ctrl-C into a clean stop, its state saved
    except KeyboardInterrupt:  # a second Ctrl-C: the state saved so far is still there
        pass
    elapsed = time.time() - started
    if remote.is_uri(results):  # Tune's own records of the trials, as it left them in the bucket
        _after_search(remote_results.pull, results, why="reading Tune's last records from the bucket failed; "
                      "the table below is this machine's copy's")
    table, csv_path = results_folder.write_trials_csv(exp_dir)
    finished = int((table["status"] != "unfinished").sum()) if not table.empty else 0
    cap = info["num_samples"]
    all_ran = (cap is not None and finished >= cap) or budget.CLOCK.refused
    interrupted = finished < len(table) or not all_ran
    if not interrupted:
        _close_study(args, exp_dir, info)
    if remote.is_uri(results):
        if _after_search(remote_results.push, exp_dir, results,
                         [csv_path.name, study_mod.JOURNAL_FILE, *budget_file(info.get("time_s"))],
                         why=f"uploading trials.csv failed; it is in {exp_dir}"):
            csv_path = _under(results, csv_path.name)
    print_outcome(args, name, results, info, table, csv_path, elapsed, finished, interrupted, n)
    return table, interrupted


def _after_search(step, *args, why: str) -> bool:
    """Run a bucket STEP once the trials are over: a storage failure then costs a warning, not the
    search's outcome (the trials' own results are in the bucket already)."""
    try:
        step(*args)
        return True
    except remote.StorageError as e:
        print(f"warning: {why} ({e})", file=sys.stderr, flush=True)
        return False


def _trials_line(info: dict) -> str:
    """'8 trials', 'as many trials as fit in 5m00s', or both bounds, as the start line says them."""
    cap, seconds = info["num_samples"], info.get("time_s")
    if seconds is None:
        return f"{cap} trials"
    return (f"trials for {say(seconds)} (at most {cap})" if cap else
            f"as many trials as fit in {say(seconds)}")


def _start_budget(args, info: dict, exp_dir: Path, time_flag: float | None) -> None:
    """Start the time budget's clock from the command's start; a resumed search gets what its
    budget has left, or --time (TIME_FLAG: the space's search.time, which --time set)."""
    from search import budget

    if not args.resume:
        budget.start(info.get("time_s"), args.started)
        return
    record = results_folder.read_budget(exp_dir)  # the budget in force when it stopped (a --time of an earlier resume)
    refused = bool(record.get("refused"))  # Tune restores its searcher finished: no new trials start
    if args.time is not None:
        budget.start(time_flag, args.started, refused=refused)
        print(f"time budget: {say(time_flag)} for the resumed search (--time)"
              + ("; it had stopped starting trials, so only its unfinished trials go on" if refused else ""),
              flush=True)
        return
    seconds, spent = record.get("time_s", info.get("time_s")), record.get("spent_s", 0.0)
    budget.start(seconds, args.started, spent=spent, refused=refused)
    if seconds:
        print(f"time budget: {say(max(0.0, seconds - spent))} left of {say(seconds)} (--time gives the resumed "
              "search a new budget)", flush=True)


def _objective_line(info: dict) -> str:
    """The objective(s), which one ASHA stops trials on, and the constraints, as the start line says
    them (from the search's search.json)."""
    objs = results_folder.objectives(info)
    said = results_folder.describe_objectives(objs)
    line = (f"objective {said}" if len(objs) == 1 else
            f"objectives {said} (Optuna's multi-objective TPE; ASHA stops trials on {info['metric']})")
    limits = results_folder.limits(info)
    if limits:
        line += f"; constraints {results_folder.describe_limits(limits)} (a configuration over them is not trained)"
    return line


def _concurrency(args, spec, cluster: dict) -> int:
    """Trials at once; a cluster that can never hold one trial is an error (a local one) or a wait."""
    short = {k: (v, cluster.get(k, 0)) for k, v in tuner_mod.trial_demand(spec).items() if cluster.get(k, 0) < v}
    if short:
        need = ", ".join(f"{v:g} {k} per trial but the cluster has {have:g}" for k, (v, have) in short.items())
        if not args.address:  # nothing will ever add resources to the local cluster
            raise space_mod.SpaceError(f"{args.space}: resources: {need}; lower resources.* or join a bigger cluster")
        print(f"warning: {need} now; trials wait until the cluster's autoscaler adds nodes", flush=True)
    if tuner_mod.uses_ray_train(spec) and cluster.get(tuner_mod.DRIVER_TOKEN, 0) < 1:
        raise space_mod.SpaceError(f"the Ray cluster has no '{tuner_mod.DRIVER_TOKEN}' resource for trial drivers; "
                                   f"start its head with --resources='{{\"{tuner_mod.DRIVER_TOKEN}\": 8}}'")
    return tuner_mod.concurrency(spec, cluster, autoscaling=bool(short))


def trial_context(spec, data_root, class_names: list[str], split_file, results) -> TrialContext:
    """What every trial of this search gets besides its hyperparameters. The one builder: the
    search saves it in the results folder (--resume, analysis.retrain and analysis.report read
    it), and the bench scripts call it too.

    RESULTS is the results folder, or its URI: then nothing a trial reads is a path of this
    machine; each node decodes into its own cache (data.cache_dir if the space sets one) and
    shares footprints there."""
    results = str(results)
    in_bucket = remote.is_uri(results) or remote.is_uri(str(data_root))
    cache_dir = ("" if in_bucket and not spec.data.cache_dir else
                 str(Path(spec.data.cache_dir or data.default_cache_dir()).expanduser().resolve()))
    return TrialContext(
        data_root=str(data_root), split_file=str(split_file), class_names=tuple(class_names),
        metric=spec.search.asha_metric, mode=spec.search.asha_mode, limits=spec.search.constraints.limits(),
        cache_dir=cache_dir, cache_max_gb=spec.data.cache_max_gb, train_storage=_under(results, TRAIN_RUNS),
        footprint_dir="" if remote.is_uri(results) else _under(results, FOOTPRINTS_DIR),
        keep_checkpoints=spec.checkpoint.keep, max_failures=spec.search.max_failures,
        resources=tuner_mod.resources(spec))


def _tuner(args, spec, name: str, exp_dir: Path, state: dict | None, context: TrialContext, n: int, results: str):
    """A new Tuner (its searcher writing the live study, warm-started if asked), or the
    interrupted one restored."""
    from search.progress import ProgressPrinter

    if args.resume:
        print(f"resuming: {results_folder.describe_trials(state)}; unfinished trials "
              "continue from their last checkpoint", flush=True)
        # trials keep the runtime and resources they started with (the saved context says so)
        if context.resources != tuner_mod.resources(spec):
            print(f"note: resuming with the resources the search started with ({exp_dir / 'context.json'}), "
                  f"not {args.space}'s", flush=True)
        if context.limits != spec.search.constraints.limits():
            print(f"note: resuming with the constraints the search started with ({context.limits or 'none'}), "
                  f"not {args.space}'s", flush=True)
        for line in resume_checkpoints.reconcile(results, exp_dir):
            print(f"note: {line}", flush=True)
        return tuner_mod.restore(results, context)  # its callbacks come back with it
    callbacks = [ProgressPrinter(spec.search.asha_metric, spec.search.asha_mode, spec.search.max_trials),
                 *_uploads(exp_dir, results, spec.search.time)]
    if spec.search.time:  # before the uploads: its first record is there to upload
        from search.budget import SpentRecorder

        callbacks.insert(1, SpentRecorder(exp_dir))
    if args.mlflow:
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        callbacks.append(MLflowLoggerCallback(tracking_uri=args.mlflow, experiment_name=name, save_artifact=False))
    search_alg = tuner_mod.searcher(spec, name, study_mod.storage(exp_dir, args.study_storage))
    if args.warm_start:
        warm_start(args.warm_start, search_alg, spec)
    return tuner_mod.build(spec, context, search_alg, _abs_storage(args.storage), name, n, callbacks=callbacks)


def budget_file(time_s: float | None) -> list[str]:
    """[budget.json] for a search with a time budget TIME_S (uploaded with the journal: --resume reads it)."""
    return [results_folder.BUDGET_FILE] if time_s else []


def _uploads(exp_dir: Path, results: str, time_s: float | None) -> list:
    """For results in a bucket: a callback that uploads the study's journal as the search runs,
    so that --resume on another machine finds the sampler's history."""
    if not remote.is_uri(results):
        return []
    from search.progress import Uploader

    return [Uploader(exp_dir, results, [study_mod.JOURNAL_FILE, *budget_file(time_s)])]


def _close_study(args, exp_dir: Path, info: dict) -> None:
    """Close the study's trials left RUNNING by a search that ended (see study.close_unfinished)."""
    if not info.get("study_storage"):
        return
    try:
        url = args.study_storage or (info["study_storage"] if study_mod.uses_rdb(info) else None)
        study_mod.close_unfinished(study_mod.load(exp_dir, info, url))
    except Exception as e:  # the study is a view of the search; never worth failing it for
        print(f"warning: could not close the study's unfinished trials: {type(e).__name__}: {e}")


def time_line(table, elapsed: float, slots: int, time_s: float | None) -> str:
    """How the time went: trials started, epochs trained, and the time the SLOTS trial slots
    (trials at once) stood idle over the ELAPSED seconds of trials (starting and stopping
    trials counts as idle)."""
    epochs = int(table["epochs_run"].sum()) if "epochs_run" in table else 0
    busy = float(table["trial_seconds"].fillna(0).sum()) if "trial_seconds" in table else 0.0
    idle = max(0.0, slots * elapsed - busy)
    share = idle / (slots * elapsed) if elapsed > 0 else 0.0
    return (f"time: {len(table)} trials started, {epochs} epochs trained in {say(elapsed)}"
            + (f" of a {say(time_s)} budget" if time_s else "")
            + f"; {slots} trial slot(s), idle {say(idle)} in all ({share:.0%})")


def print_outcome(args, name: str, results: str, info: dict, table, csv_path, elapsed: float,
                  finished: int, interrupted: bool, slots: int) -> None:
    """The end of a search: counts, the top of the leaderboard, failures, next commands, and for
    an interrupted search the --resume command."""
    print(f"\nsearch {'interrupted' if interrupted else 'finished'} after {elapsed:.0f}s of trials, "
          f"{time.time() - args.started:.0f}s wall time in all: "
          + ", ".join(f"{v} {k}" for k, v in table["status"].value_counts().items()))
    print(time_line(table, elapsed, slots, info.get("time_s")))
    print(results_folder.format_board(results_folder.leaderboard(table, info), info, top=5))
    rejected = int((table["status"] == "rejected").sum()) if "status" in table else 0
    if rejected:
        print(f"{rejected} configuration(s) over search.constraints were not trained; the sampler was told "
              "they are infeasible")
    front = results_folder.format_front(table, info)
    if front:
        print(front)
    failed = table[table["status"].isin(["error", "diverged"])]
    if not failed.empty:
        print(f"\n{len(failed)} trial(s) failed; the search went on without them:")
        for _, t in failed.iterrows():
            print(f"  {t['trial_id']} {t['status']}: {t['error']}\n    traceback: {t['error_file']}")
    print(f"\nresults: {results}\n  trials: {csv_path}\n"
          f"  next: python -m analysis.rank {results}\n        python -m analysis.retrain {results}\n"
          f"        python -m analysis.report {results}")
    if interrupted:
        print(f"\n{results_folder.describe_trials({'finished': finished, 'num_samples': info['num_samples']})}; "
              "continue the search with:\n"
              f"  {resume_command(args, name)}", flush=True)


def resume_command(args, name: str) -> str:
    """The command that continues this search: where it is, and the cluster and data it ran on
    (the resumed search keeps its saved inputs; --data spares it preparing the space's default)."""
    import shlex

    extra = [*(["--address", args.address] if args.address else []), *(["--data", args.data] if args.data else [])]
    return shlex.join(["python", "-m", "search.run", args.space, "--storage", args.storage, "--name", name,
                       *extra, "--resume"])


def warm_cache(spec, context: TrialContext) -> None:
    """Decode the train and val images once per image size the space can pick, before any trial.

    Trials then only map the cache; an image size from an int range is decoded by the first
    trial that draws it (the others wait for it)."""
    knob = spec.knobs.get("image_size")
    if knob is not None and knob.kind not in ("const", "choice"):
        return
    sizes = knob.values() if knob is not None else [TrialParams().image_size]
    for split_name in ("train", "val"):
        items = data.read_split(context.split_file, (split_name,))
        for size in sorted(set(sizes)):
            data.load_images(context.data_root, items, list(context.class_names), int(size), context.cache_dir,
                             stream=sys.stdout, cache_max_gb=context.cache_max_gb)


def main(argv=None) -> int:
    started = time.time()
    args = parse_args(argv)
    args.started = started
    from trainables.images import DataError
    from trainables.models import ModelError

    try:
        spec, name, index = prepare(args)
        if not args.dry_run:
            checked = check_results_dir(args, name)  # before Ray starts
            check_study_options(args, name, spec)
        if args.mlflow:
            import importlib.util

            if importlib.util.find_spec("mlflow") is None:
                raise space_mod.SpaceError("--mlflow: the mlflow package is not installed; pip install mlflow")
    except (space_mod.SpaceError, DataError, ModelError, remote.StorageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print_data_summary(data.summary(index))
    if args.dry_run:
        print("\nresolved space:\n" + space_mod.describe(spec))
        return 0
    owns_ray = False
    try:
        owns_ray = start_ray(args.address, args.verbose)
        stop_on_sigterm()  # after ray.init, whose own SIGTERM handler would abort this process
        table, interrupted = run_search(args, spec, name, index, checked)
    except (space_mod.SpaceError, remote.StorageError, DataError) as e:  # a bucket failing mid-search, too
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:  # before Tune took over the signal, or after it returned
        print("\ninterrupted; rerun the same command to see what was kept (it says when --resume applies)",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if owns_ray:
            import ray

            ray.shutdown()
    if interrupted:
        return EXIT_INTERRUPTED
    if not table.empty and (table["status"] == "rejected").all():
        print(f"error: every configuration was over search.constraints ({table['infeasible'].iloc[0]}, ...); "
              "loosen them, or search smaller models or images", file=sys.stderr)
        return 1
    if not table.empty and table["status"].isin(["rejected", "error", "diverged"]).all():
        rejected = int((table["status"] == "rejected").sum())
        failed = table[table["status"] != "rejected"]
        print(f"error: every trial failed{f' or was over search.constraints ({rejected})' if rejected else ''}; "
              f"most common reason: {failed['error'].mode().iloc[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
