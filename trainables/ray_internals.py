"""Everything this project relies on in Ray beyond its documented API, in one module.

Ray 2.60's private hooks, internal environment variables, logger names and Tune's file names.
`missing_hooks()` checks each of them against the installed Ray; `tests/test_ray_internals.py`
fails when an upgrade removes one, and pyproject.toml pins Ray to the versions that test passed
on. The measurements behind the settings are in bench/README.md. (Ludwig keeps its Ray
workarounds in one file the same way: `hyperopt/_ray210_compat.py`.)

- Settings, by environment variable: `apply_env` and `init_kwargs` before `ray.init`;
  `abandon_running_trials` when a search stops with trials running.
- Quiet consoles: `quiet_env`, `TUNE_CONTROLLER_LOGGER`.
- Tune's trial files: `STATE_GLOB`, `PARAMS_FILE`, `RESULTS_FILE`, `ERROR_FILE`.
- A TorchTrainer per trial: `lean_torch_trainer()`, `hand_over_report_callback()`.
- The searcher's private state: `optuna_trials`, `study_of`, `completed_trials`.
- A Tune trial's folders, for callbacks: `trial_local_dir`, `trial_remote_dir`, `trial_error_file`.
- Workaround: a trial whose process died is saved as ERROR, not RUNNING: `save_stopped_trial_state()`.
"""
from __future__ import annotations

import functools
import inspect
import logging
import os
import socket
import time
from pathlib import Path

logger = logging.getLogger(__name__)

# ---- settings, by environment variable ----------------------------------------------------

# Ray Train's controller poll (default 2 s): a report reaches Tune, and the end of a run is
# noticed, only at a poll, so a short poll keeps each epoch of a TorchTrainer trial from waiting
# on it (bench/README.md).
TRAIN_POLL = ("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
# Train's preemption watcher: one more actor per trial, polling for nodes being drained, which
# a local machine never is.
PREEMPTION_WATCHER = ("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
# How long a reused Tune actor waits for the last trial's thread to unwind (its `finally`
# blocks: DataLoader workers, temporary checkpoint folders) before it fails the next trial.
ACTOR_HANDOVER = ("TUNE_FUNCTION_THREAD_TIMEOUT_S", "30")
# Tune warns whenever it snapshots the experiment often, as it does with trials of seconds.
SYNC_WARNING = ("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
# glibc's malloc arenas: a reused actor runs each trial in a new thread, and each thread's arena
# keeps its freed memory. Read when a process starts, so set before Ray starts its workers.
MALLOC_ARENAS = ("MALLOC_ARENA_MAX", "2")
# Where Ray's processes find the dashboard's API (Train's placement-group cleaner uses it).
API_SERVER = "RAY_API_SERVER_ADDRESS"
# Ray prints the error of a task whose result nobody read when its reference goes ("Unhandled
# error", with the task's traceback) unless this is set; `Worker.raise_errors` looks at each error.
IGNORE_UNHANDLED = "RAY_IGNORE_UNHANDLED_ERRORS"
# The console: no Train print patch, trials stay in the search's working directory, Tune's
# old (quiet with verbose=0) output instead of its banner.
QUIET = (("RAY_TRAIN_ENABLE_PRINT_PATCH", "0"), ("RAY_CHDIR_TO_TRIAL_DIR", "0"), ("RAY_AIR_NEW_OUTPUT", "0"))
# The logger that prints a failed trial's whole traceback (it is in the trial's error.txt).
TUNE_CONTROLLER_LOGGER = "ray.tune.execution.tune_controller"
# warns, on --resume, of a trial that had not reported yet when the search was stopped
EXPERIMENT_ANALYSIS_LOGGER = "ray.tune.analysis.experiment_analysis"


def quiet_env() -> None:
    for name, value in QUIET:
        os.environ.setdefault(name, value)


def apply_env(local: bool = True) -> None:
    """Environment variables for this process, inherited by every Ray process it starts.

    `local`: the cluster is the one this process starts on this machine (not `--address`)."""
    for name, value in (TRAIN_POLL, SYNC_WARNING, ACTOR_HANDOVER, MALLOC_ARENAS):
        os.environ.setdefault(name, value)
    if local:
        os.environ.setdefault(*PREEMPTION_WATCHER)


def abandon_running_trials() -> None:
    """The search stops now, with trials still running: the errors their tasks end with after
    this (their storage gone, Ray shutting down) are not printed after the search's own line."""
    os.environ[IGNORE_UNHANDLED] = "1"


def init_kwargs(local: bool = True, dashboard_host: str = "127.0.0.1") -> dict:
    """Extra `ray.init` arguments; `dashboard_host` must be the one given to `ray.init`.

    A cluster we join (`local=False`) was started by `ray start`, so its processes do not
    inherit this process's environment: the job's runtime_env carries the settings to each
    trial, whose TorchTrainer passes them on to its controller.

    A local cluster gets a free dashboard port picked here, and its address goes to every worker
    as RAY_API_SERVER_ADDRESS. Without it, Train's placement-group cleaner (which frees a trial's
    CPUs when Tune kills the trial mid-run) finds the cluster by scanning the machine, and fails
    with "Found multiple active Ray instances" as soon as a second Ray runs there: the CPUs are
    never freed and the next trial waits forever ("The worker group startup timed out")."""
    if not local:
        return {"runtime_env": {"env_vars": {name: os.environ.get(name, value)
                                             for name, value in (TRAIN_POLL, ACTOR_HANDOVER, MALLOC_ARENAS)}}}
    if os.environ.get(API_SERVER) or os.environ.get("RAY_ADDRESS"):
        return {}  # the user says where the cluster is
    with socket.socket() as s:
        s.bind((dashboard_host, 0))
        port = s.getsockname()[1]
    return {"dashboard_port": port, "runtime_env": {"env_vars": {API_SERVER: f"http://{dashboard_host}:{port}"}}}


# ---- Tune's trial files (ray.air.constants; the experiment state: TuneController.CKPT_FILE_TMPL) ----

STATE_GLOB = "experiment_state-*.json"
PARAMS_FILE = "params.json"
RESULTS_FILE = "result.json"
ERROR_FILE = "error.txt"
# a trial's checkpoints: StorageContext._make_checkpoint_dir_name; a report names its own in
# ray.train.constants.CHECKPOINT_DIR_NAME; the experiment state's run metadata holds the last report
CHECKPOINT_PREFIX = "checkpoint_"
CHECKPOINT_DIR_NAME = "checkpoint_dir_name"
LAST_RESULT = "last_result"


# ---- a TorchTrainer per trial ---------------------------------------------------------------

def lean_torch_trainer():
    """TorchTrainer without Train's Ray Data plumbing when the run has no Ray Datasets.

    Ray 2.60's `DataParallelTrainer._create_default_callbacks` always adds a `DatasetsCallback`,
    which starts a `DatasetManager` actor (one more Python process importing Ray Data;
    bench/README.md) in every run, used or not. Runs with `datasets` keep it."""
    from ray.train.torch import TorchTrainer

    class LeanTorchTrainer(TorchTrainer):
        def _create_default_callbacks(self):
            callbacks = super()._create_default_callbacks()
            if self.datasets:
                return callbacks
            return [c for c in callbacks if type(c).__name__ != "DatasetsCallback"]

    return LeanTorchTrainer


def hand_over_report_callback():
    """TuneReportCallback whose `after_report` returns only once the Tune trial took the report.

    Since ray-project/ray#55556 the callback puts each report in a queue actor
    (`_training_actor_item_queue`) and returns at once. If the Train run then ends and the trial
    function returns before Tune fetched that last report, the trial's Tune session deadlocks
    (its main thread blocks in `Queue.put` of `_TrainSession._report_training_result`, the
    function's final result filling the one-slot result queue): the trial hangs, holding its
    driver token. The 0.2 s Train poll makes it likely. Waiting here, in the Train controller,
    keeps the run from ending until Tune has the report."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class HandOverTuneReportCallback(TuneReportCallback):
        def after_report(self, run_context, metrics, checkpoint):
            super().after_report(run_context, metrics, checkpoint)
            queue = self._training_actor_item_queue
            try:
                while not queue.empty():
                    time.sleep(0.02)
            except Exception:  # the trial actor, owner of the queue, is gone: nobody to wait for
                pass

    return HandOverTuneReportCallback()


# ---- the searcher's private state ----------------------------------------------------------
# `search.searcher.EpochOptunaSearch` subclasses Ray's OptunaSearch; these are the private
# attributes of it that the subclass reads (checked by HOOKS below).

def optuna_trials(searcher) -> dict:
    """Tune trial id → the live `optuna.Trial` an OptunaSearch asked for it."""
    return searcher._ot_trials


def study_of(searcher):
    """The `optuna.Study` an OptunaSearch drives (to seed it with earlier trials)."""
    return searcher._ot_study


def completed_trials(searcher) -> set:
    """The Tune trial ids an OptunaSearch has already told to Optuna as finished."""
    return searcher._completed_trials


# ---- a Tune trial's folders (ray.tune.experiment.Trial, as Tune hands it to callbacks) ----------

def trial_local_dir(trial) -> Path:
    """The driver's own copy of TRIAL's folder, where Tune's loggers append result.json first."""
    return Path(trial.local_path)


def trial_remote_dir(trial) -> tuple:
    """TRIAL's folder in the results folder: (its pyarrow file system, the path in it)."""
    return trial.storage.storage_filesystem, trial.storage.trial_fs_path


def trial_error_file(trial) -> str | None:
    """TRIAL's error.txt (a 'Failure # N' section per failure), or None before its first failure."""
    return trial.error_file


def _trial_folders() -> bool:
    """The Trial and StorageContext attributes above, on a trial built without a cluster. Its
    `local_path` and `error_file` need a Ray session: they are checked as properties whose code
    reads the driver's staging folder and the run metadata's error file name."""
    import tempfile

    import pyarrow.fs
    from ray.train._internal.storage import StorageContext
    from ray.tune.experiment import Trial

    def reads(prop, *names):
        return isinstance(prop, property) and all(n in inspect.getsource(prop.fget) for n in names)

    with tempfile.TemporaryDirectory() as d:
        trial = Trial("fn", trial_id="t", storage=StorageContext(storage_path=d, experiment_dir_name="exp"),
                      stub=True)
        trial.storage.trial_dir_name = "trial_t"
        fs, path = trial_remote_dir(trial)
        return (isinstance(fs, pyarrow.fs.FileSystem) and Path(path) == Path(d, "exp", "trial_t")
                and trial.run_metadata.error_filename is None
                and reads(Trial.local_path, "self.storage.trial_driver_staging_path")
                and reads(Trial.error_file, "self.local_path", "self.run_metadata.error_filename"))


# ---- workaround: the experiment state of a trial whose process died ---------------------------

def save_stopped_trial_state() -> None:
    """Make Tune save a trial it stopped after the trial's process died, as ERROR, not RUNNING.

    Ray 2.60's `TuneController._schedule_trial_stop` sets the trial's new status, then returns
    early when the trial has no actor any more, before `self._mark_trial_to_checkpoint(trial)`,
    the call that puts the trial's new state into the experiment state Tune saves
    (`_get_trial_checkpoints`). A trial has no actor there when its process died (SIGKILL, the
    out-of-memory killer): on a `RayActorError` Ray's actor manager runs the actor's error
    callback (`_actor_failed`, which drops the trial's actor) before the task's
    (`_trial_task_failure` -> `_process_trial_failure` -> `_schedule_trial_stop`). So a trial
    killed on its last allowed failure stayed RUNNING in experiment_state-*.json whenever Tune had
    saved the state since the trial's last report: the search counted it unfinished
    ("interrupted", exit 130) and `--resume` ran it again. tests/test_ray_internals.py kills a
    trial in that window every time.

    The patch marks the trial after every stop, which is what the early return skips; marking
    only adds the trial to the set whose state the next save takes. Idempotent; the hooks check
    fails once Ray changes the method, and then this is to be checked again, and dropped if Ray
    fixed it."""
    from ray.tune.execution.tune_controller import TuneController

    stop = TuneController._schedule_trial_stop
    if getattr(stop, "_marks_trial", False):
        return

    @functools.wraps(stop)
    def schedule_trial_stop(self, trial, exception=None):
        stop(self, trial, exception=exception)
        self._mark_trial_to_checkpoint(trial)

    schedule_trial_stop._marks_trial = True
    TuneController._schedule_trial_stop = schedule_trial_stop


def _trial_stop_skips_the_save() -> bool:
    """Ray's own `_schedule_trial_stop` (under the patch) is still the one the patch is for."""
    from ray.tune.execution.tune_controller import TuneController

    text = inspect.getsource(inspect.unwrap(TuneController._schedule_trial_stop))
    early, mark = "if trial not in self._trial_to_actor:", "self._mark_trial_to_checkpoint(trial)"
    params = list(inspect.signature(inspect.unwrap(TuneController._schedule_trial_stop)).parameters)
    return (params == ["self", "trial", "exception"] and early in text and mark in text
            and text.index(early) < text.index(mark)
            and "self._trials_to_cache.add(trial)" in _source_of("ray.tune.execution.tune_controller",
                                                                 "TuneController._mark_trial_to_checkpoint")
            and "self._get_trial_checkpoints()" in _source_of("ray.tune.execution.tune_controller",
                                                              "TuneController.save_to_dir"))


# ---- the check --------------------------------------------------------------------------------

def _source_of(module: str, qualname: str = "") -> str:
    """The source text of MODULE, or of the function QUALNAME in it."""
    import importlib

    obj = importlib.import_module(module)
    for part in filter(None, qualname.split(".")):
        obj = getattr(obj, part)
    return inspect.getsource(obj)


def _source_mentions(module: str, *names: str) -> bool:
    text = _source_of(module)
    return all(n in text for n in names)


def _trainer_callbacks() -> bool:
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    return "DatasetsCallback(" in _source_of("ray.train.v2.api.data_parallel_trainer",
                                             "DataParallelTrainer._create_default_callbacks") \
        and issubclass(lean_torch_trainer(), DataParallelTrainer)


def _optuna_search_state() -> bool:
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    s = OptunaSearch(lambda trial: {"x": trial.suggest_float("x", 0, 1)}, metric="m", mode="max",
                     sampler=optuna.samplers.RandomSampler(seed=0))
    return isinstance(s._ot_trials, dict) and isinstance(s._completed_trials, set) and \
        isinstance(s._ot_study, optuna.Study)


HOOKS = {
    "DataParallelTrainer._create_default_callbacks adds a DatasetsCallback": lambda: _trainer_callbacks(),
    "TuneReportCallback._training_actor_item_queue":
        lambda: "self._training_actor_item_queue =" in _source_of("ray.tune.integration.ray_train",
                                                                 "TuneReportCallback.__init__"),
    "OptunaSearch._ot_trials, _ot_study, _completed_trials": _optuna_search_state,
    **{f"environment variable {name}": (lambda name=name, module=module: _source_mentions(module, f'"{name}"'))
       for name, module in ((TRAIN_POLL[0], "ray.train.v2._internal.constants"),
                            (PREEMPTION_WATCHER[0], "ray.train.v2._internal.constants"),
                            (QUIET[0][0], "ray.train.v2._internal.constants"),
                            (QUIET[1][0], "ray.train.constants"),
                            (QUIET[2][0], "ray.tune.experimental.output"),
                            (ACTOR_HANDOVER[0], "ray.tune.trainable.function_trainable"),
                            (SYNC_WARNING[0], "ray.tune.execution.experiment_state"),
                            (API_SERVER, "ray._private.ray_constants"),
                            (IGNORE_UNHANDLED, "ray._private.worker"))},
    **{f"logger {name}": (lambda name=name: _source_mentions(name, "logging.getLogger(__name__)"))
       for name in (TUNE_CONTROLLER_LOGGER, EXPERIMENT_ANALYSIS_LOGGER)},
    "Tune's file names": lambda: _tune_file_names_match(),
    "Tune's checkpoint names and the run metadata's last report": lambda: _checkpoint_names_match(),
    "Trial.local_path, .storage (storage_filesystem, trial_fs_path), .error_file": lambda: _trial_folders(),
    "TuneController._schedule_trial_stop returns before marking a trial with no actor":
        lambda: _trial_stop_skips_the_save(),
}


def _checkpoint_names_match() -> bool:
    from ray.train import constants
    from ray.train._internal.storage import StorageContext
    from ray.tune.trainable.metadata import _TrainingRunMetadata

    return (StorageContext._make_checkpoint_dir_name(7) == f"{CHECKPOINT_PREFIX}000007"
            and constants.CHECKPOINT_DIR_NAME == CHECKPOINT_DIR_NAME
            and LAST_RESULT in _TrainingRunMetadata().get_json_state())


def _tune_file_names_match() -> bool:
    from ray.air import constants
    from ray.tune.execution.tune_controller import TuneController

    return (constants.EXPR_PARAM_FILE, constants.EXPR_RESULT_FILE, constants.EXPR_ERROR_FILE) == \
        (PARAMS_FILE, RESULTS_FILE, ERROR_FILE) and TuneController.CKPT_FILE_TMPL.format("*") == STATE_GLOB


def missing_hooks() -> list[str]:
    """The entries of HOOKS the installed Ray lacks (empty when all are there)."""
    missing = []
    for name, check in HOOKS.items():
        try:
            ok = check()
        except Exception:  # a module, class or attribute that is gone
            ok = False
        if not ok:
            missing.append(name)
    return missing
