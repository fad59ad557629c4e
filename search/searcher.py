"""The search's Optuna searcher: Ray's `OptunaSearch`, told the truth about each epoch.

Ray's `OptunaSearch` tells Optuna every trial that ends without an error as COMPLETE with its
last score, ASHA-stopped ones included (its states since ray-project/ray#15283), and reports
intermediate values by `training_iteration`; the result on which a trial stops reaches only
`on_trial_complete` (Tune's controller skips `on_trial_result` for it). `EpochOptunaSearch`
reports each epoch at step = `epoch`, ends an ASHA-stopped trial (fewer epochs than it planned)
as PRUNED, so that TPE treats it as one of Optuna's own pruned trials, and a completed trial
(all its epochs, or stopped by its own early-stop patience) as COMPLETE with its best score (the
one its kept checkpoint has).

The private state of `OptunaSearch` it reads is reached through `trainables.ray_internals`
(`optuna_trials`, `study_of`, `completed_trials`), which a test checks against the installed Ray.
"""
from __future__ import annotations

import logging
import math

from ray.tune.search.optuna import OptunaSearch

from trainables.ray_internals import completed_trials, optuna_trials, study_of

logger = logging.getLogger(__name__)


class EpochOptunaSearch(OptunaSearch):
    """OptunaSearch that reports per epoch, tells ASHA-stopped trials to Optuna as PRUNED, and
    tells it each trial's model footprint and how far over the search's LIMITS it is.

    The footprint (trainables.models.footprint) becomes the Optuna trial's user attributes, and each
    limit a constraint (`Trial.set_constraint`: `limits.violation`, > 0 infeasible), which TPE
    ranks below every feasible trial; a trial over a limit was never trained and ends PRUNED. In
    a multi-objective search (METRIC a list: a validation metric, then costs) the values told are
    the first objective's best and the model's costs; Optuna takes no intermediate values there.

    MAY_START, when given, is asked before each new trial (a module-level function, pickled by
    name with the searcher): False ends the search's trials (`Searcher.FINISHED`), as a time
    budget does when a new trial could no longer reach its first rung."""

    def __init__(self, *args, limits: dict[str, float] | None = None, may_start=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._limits = dict(limits or {})
        self._may_start = may_start
        self._epochs: dict[str, dict[int, float]] = {}

    def _reported(self, trial_id: str) -> dict[int, float]:
        """Epoch → value told to Optuna so far (kept in the searcher, so it survives a resume)."""
        return self._epochs.setdefault(trial_id, {})

    @property
    def _names(self) -> list[str]:
        """The objectives: the first is the validation metric reported each epoch."""
        return list(self.metric) if isinstance(self.metric, list) else [self.metric]

    def suggest(self, trial_id: str) -> dict | None:
        if self._may_start is not None and not self._may_start():
            return OptunaSearch.FINISHED
        config = super().suggest(trial_id)
        trials = optuna_trials(self)
        if trial_id in trials:  # the dashboard's trial names the trial folder
            trials[trial_id].set_user_attr("trial_id", trial_id)
        return config

    def _open(self, trial_id: str) -> bool:
        """Asked for by this searcher, and not yet told to Optuna as finished."""
        return trial_id in optuna_trials(self) and trial_id not in completed_trials(self)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if not self._open(trial_id):
            return
        self._tell_footprint(trial_id, result)
        value, epoch = result.get(self._names[0]), result.get("epoch")
        if value is None or epoch is None or not math.isfinite(value):
            return
        reported = self._reported(trial_id)
        if int(epoch) not in reported:  # an epoch redone after a restore is not reported twice
            reported[int(epoch)] = float(value)
            if len(self._names) == 1:  # Optuna takes no intermediate values in a multi-objective study
                _guarded(optuna_trials(self)[trial_id].report, float(value), int(epoch))

    def _tell_footprint(self, trial_id: str, result: dict) -> None:
        """The model's figures as user attributes and its constraints, once per trial."""
        trial = optuna_trials(self)[trial_id]
        if result.get("latency_ms") is None or "latency_ms" in trial.user_attrs:
            return
        from trainables.models.limits import FIGURES, violation

        for name in (*FIGURES, "infeasible"):
            if result.get(name) is not None:
                _guarded(trial.set_user_attr, name, result[name])
        for name, limit in self._limits.items():
            if result.get(name) is not None:
                _guarded(trial.set_constraint, name, violation(result[name], limit))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if not self._open(trial_id):
            return
        if result:  # Tune hands the last epoch (the one ASHA stopped at, or the final one) only here
            self.on_trial_result(trial_id, result)
        _guarded(self._tell_end, trial_id, result, error)
        completed_trials(self).add(trial_id)

    def _tell_end(self, trial_id: str, result: dict | None, error: bool) -> None:
        """Tell Optuna how the trial ended: PRUNED (never trained, or stopped by ASHA: fewer epochs
        than planned and not by its own patience), FAIL, or COMPLETE with its best value."""
        from optuna.trial import TrialState

        study, trial, reported = study_of(self), optuna_trials(self)[trial_id], self._reported(trial_id)
        stopped = bool(result) and result.get("epoch", 0) < result.get("epoch_of", 0) \
            and not result.get("early_stopped")
        costs = [(result or {}).get(name) for name in self._names[1:]]
        if not error and result and result.get("infeasible"):  # not trained; its constraints say why
            study.tell(trial, state=TrialState.PRUNED)
        elif error or not reported or None in costs:
            study.tell(trial, state=TrialState.FAIL)
        elif stopped:  # Optuna takes its last intermediate value
            study.tell(trial, state=TrialState.PRUNED)
        else:
            best = max(reported.values()) if self._mode_of_first() == "max" else min(reported.values())
            study.tell(trial, [best, *map(float, costs)] if costs else best, state=TrialState.COMPLETE)

    def _mode_of_first(self) -> str:
        return self.mode[0] if isinstance(self.mode, list) else self.mode


def _guarded(call, *args, **kwargs) -> None:
    """A study update that fails (a trial already finished in the storage, as after a kill and a
    resume from an older searcher state; a storage I/O error) is logged; the search goes on, as
    Ray's own OptunaSearch does."""
    try:
        call(*args, **kwargs)
    except Exception as e:
        logger.warning("Optuna study not updated: %s: %s", type(e).__name__, e)
