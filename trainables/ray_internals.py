"""Everything this project relies on in Ray beyond its documented API, in one module.

Ray 2.60's private hooks, internal environment variables, logger names and Tune's file names.
`missing_hooks()` checks each of them against the installed Ray; `tests/test_ray_internals.py`
fails when an upgrade removes one, and pyproject.toml pins Ray to the versions that test passed
on. The measurements behind the settings are in bench/README.md. (Ludwig keeps its Ray
workarounds in one file the same way: `hyperopt/_ray210_compat.py`.)

- Settings, by environment variable: `apply_env` and `init_kwargs` before `ray.init`.
- Quiet consoles: `quiet_env`, `TUNE_CONTROLLER_LOGGER`.
- Tune's trial files: `STATE_GLOB`, `PARAMS_FILE`, `RESULTS_FILE`, `ERROR_FILE`.
- A TorchTrainer per trial: `lean_torch_trainer()`, `hand_over_report_callback()`.
- The searcher: `EpochOptunaSearch`, `study_of`.
"""
from __future__ import annotations

import inspect
import logging
import math
import os
import socket
import time

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


# ---- the searcher ---------------------------------------------------------------------------

def _epoch_optuna_search_class():
    """Defined on first use (see `__getattr__`): importing this module must not import Ray Tune
    and Optuna, which the trials' workers and the analysis commands never need."""
    from ray.tune.search.optuna import OptunaSearch

    class EpochOptunaSearch(OptunaSearch):
        """OptunaSearch that reports per epoch, tells ASHA-stopped trials to Optuna as PRUNED, and
        tells it each trial's model footprint and how far over the search's LIMITS it is.

        Ray's `OptunaSearch` tells Optuna every trial that ends without an error as COMPLETE with
        its last score, ASHA-stopped ones included (its states since ray-project/ray#15283), and
        reports intermediate values by `training_iteration`; the result on which a trial stops
        reaches only `on_trial_complete` (Tune's controller skips `on_trial_result` for it). This
        subclass reports each epoch at step = `epoch`, ends an ASHA-stopped trial (fewer epochs than
        it planned) as PRUNED, so that TPE treats it as one of Optuna's own pruned trials, and a
        completed trial (all its epochs, or stopped by its own early-stop patience) as COMPLETE with
        its best score (the one its kept checkpoint has).

        The footprint (trainables.footprint) becomes the Optuna trial's user attributes, and each
        limit a constraint (`Trial.set_constraint`: `limits.violation`, > 0 infeasible), which
        TPE ranks below every feasible trial; a trial over a limit was never trained and ends
        PRUNED. In a multi-objective search (METRIC a list: a validation metric, then costs)
        the values told are the first objective's best and the model's costs; Optuna takes no
        intermediate values there. It uses OptunaSearch's private `_ot_trials`, `_ot_study` and
        `_completed_trials`.

        MAY_START, when given, is asked before each new trial (a module-level function, pickled by
        name with the searcher): False ends the search's trials (`Searcher.FINISHED`), as a time
        budget does when a new trial could no longer reach its first rung."""

        def __init__(self, *args, limits: dict[str, float] | None = None, may_start=None, **kwargs):
            super().__init__(*args, **kwargs)
            self._limits = dict(limits or {})
            self._may_start = may_start

        def _reported(self, trial_id: str) -> dict[int, float]:
            """Epoch → value told to Optuna so far (kept in the searcher, so it survives a resume)."""
            if not hasattr(self, "_epochs"):
                self._epochs: dict[str, dict[int, float]] = {}
            return self._epochs.setdefault(trial_id, {})

        @property
        def _names(self) -> list[str]:
            """The objectives: the first is the validation metric reported each epoch."""
            return list(self.metric) if isinstance(self.metric, list) else [self.metric]

        def suggest(self, trial_id: str) -> dict | None:
            if getattr(self, "_may_start", None) is not None and not self._may_start():
                return OptunaSearch.FINISHED
            config = super().suggest(trial_id)
            if trial_id in self._ot_trials:  # the dashboard's trial names the trial folder
                self._ot_trials[trial_id].set_user_attr("trial_id", trial_id)
            return config

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            if trial_id in self._completed_trials or trial_id not in self._ot_trials:
                return
            self._tell_footprint(trial_id, result)
            value, epoch = result.get(self._names[0]), result.get("epoch")
            if value is None or epoch is None or not math.isfinite(value):
                return
            reported = self._reported(trial_id)
            if int(epoch) not in reported:  # an epoch redone after a restore is not reported twice
                reported[int(epoch)] = float(value)
                if len(self._names) == 1:  # Optuna takes no intermediate values in a multi-objective study
                    _guarded(self._ot_trials[trial_id].report, float(value), int(epoch))

        def _tell_footprint(self, trial_id: str, result: dict) -> None:
            """The model's figures as user attributes and its constraints, once per trial."""
            trial = self._ot_trials[trial_id]
            if result.get("latency_ms") is None or "latency_ms" in trial.user_attrs:
                return
            from trainables.limits import FIGURES, violation

            for name in (*FIGURES, "infeasible"):
                if result.get(name) is not None:
                    _guarded(trial.set_user_attr, name, result[name])

            for name, limit in getattr(self, "_limits", {}).items():  # a searcher pickled before limits: none
                if result.get(name) is not None:
                    _guarded(trial.set_constraint, name, violation(result[name], limit))

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            if trial_id in self._completed_trials or trial_id not in self._ot_trials:
                return
            from optuna.trial import TrialState

            if result:  # Tune hands the last epoch (the one ASHA stopped at, or the final one) only here
                self.on_trial_result(trial_id, result)
            trial, reported = self._ot_trials[trial_id], self._reported(trial_id)
            # fewer epochs than planned: ASHA stopped it, unless its own early-stop patience did
            stopped = bool(result) and result.get("epoch", 0) < result.get("epoch_of", 0) \
                and not result.get("early_stopped")
            costs = [(result or {}).get(name) for name in self._names[1:]]
            if not error and result and result.get("infeasible"):  # not trained; its constraints say why
                _guarded(self._ot_study.tell, trial, state=TrialState.PRUNED)
            elif error or not reported or None in costs:
                _guarded(self._ot_study.tell, trial, state=TrialState.FAIL)
            elif stopped:  # Optuna takes its last intermediate value
                _guarded(self._ot_study.tell, trial, state=TrialState.PRUNED)
            else:
                best = max(reported.values()) if self._mode_of_first() == "max" else min(reported.values())
                values = [best, *map(float, costs)] if costs else best
                _guarded(self._ot_study.tell, trial, values, state=TrialState.COMPLETE)
            self._completed_trials.add(trial_id)

        def _mode_of_first(self) -> str:
            return self.mode[0] if isinstance(self.mode, list) else self.mode

    EpochOptunaSearch.__module__, EpochOptunaSearch.__qualname__ = __name__, "EpochOptunaSearch"
    return EpochOptunaSearch


def __getattr__(name: str):
    """`EpochOptunaSearch`, made once, then an ordinary module attribute (PEP 562): Tune pickles
    the searcher by this module's name and unpickles it through here."""
    if name == "EpochOptunaSearch":
        cls = globals()[name] = _epoch_optuna_search_class()
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _guarded(call, *args, **kwargs) -> None:
    """A study update that fails (a trial already finished in the storage, as after a kill and a
    resume from an older searcher state; a storage I/O error) is logged; the search goes on, as
    Ray's own OptunaSearch does."""
    try:
        call(*args, **kwargs)
    except Exception as e:
        logger.warning("Optuna study not updated: %s: %s", type(e).__name__, e)


def study_of(searcher):
    """The `optuna.Study` an OptunaSearch drives (to seed it with earlier trials)."""
    return searcher._ot_study


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
                            (API_SERVER, "ray._private.ray_constants"))},
    **{f"logger {name}": (lambda name=name: _source_mentions(name, "logging.getLogger(__name__)"))
       for name in (TUNE_CONTROLLER_LOGGER, EXPERIMENT_ANALYSIS_LOGGER)},
    "Tune's file names": lambda: _tune_file_names_match(),
    "Tune's checkpoint names and the run metadata's last report": lambda: _checkpoint_names_match(),
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
