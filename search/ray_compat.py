"""Every Ray behaviour this project relies on beyond Ray's documented API, in one place.

`tests/test_ray_compat.py` checks each of them against the installed Ray, so that an upgrade
that removes one fails a test rather than a user's search. (Ludwig keeps such code in one file
for the same reason: `hyperopt/_ray210_compat.py`.)

- `EpochOptunaSearch`: Ray's `OptunaSearch` tells Optuna every trial that ends without an error
  as COMPLETE with its last score, ASHA-stopped ones included, and reports intermediate values
  by `training_iteration`; the result on which a trial stops reaches only `on_trial_complete`
  (Tune's controller skips `on_trial_result` for it). This subclass reports each epoch at step = `epoch`, ends an
  ASHA-stopped trial (fewer epochs than it planned) as PRUNED, so that TPE treats it as one of
  Optuna's own pruned trials, and a completed trial (all its epochs, or stopped by its own
  early-stop patience) as COMPLETE with its best score (the one its kept checkpoint has). It uses OptunaSearch's private `_ot_trials`, `_ot_study` and
  `_completed_trials`.
"""
from __future__ import annotations

import logging
import math

from ray.tune.search.optuna import OptunaSearch

logger = logging.getLogger(__name__)


class EpochOptunaSearch(OptunaSearch):
    """OptunaSearch that reports per epoch and tells ASHA-stopped trials to Optuna as PRUNED."""

    def _reported(self, trial_id: str) -> dict[int, float]:
        """Epoch → value told to Optuna so far (kept in the searcher, so it survives a resume)."""
        if not hasattr(self, "_epochs"):
            self._epochs: dict[str, dict[int, float]] = {}
        return self._epochs.setdefault(trial_id, {})

    def suggest(self, trial_id: str) -> dict | None:
        config = super().suggest(trial_id)
        if trial_id in self._ot_trials:  # the dashboard's trial names the trial folder
            self._ot_trials[trial_id].set_user_attr("trial_id", trial_id)
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        value, epoch = result.get(self.metric), result.get("epoch")
        if value is None or epoch is None or not math.isfinite(value):
            return
        reported = self._reported(trial_id)
        if int(epoch) not in reported:  # an epoch redone after a restore is not reported twice
            reported[int(epoch)] = float(value)
            _guarded(self._ot_trials[trial_id].report, float(value), int(epoch))

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
        if error or not reported:
            _guarded(self._ot_study.tell, trial, state=TrialState.FAIL)
        elif stopped:  # Optuna takes its last intermediate value
            _guarded(self._ot_study.tell, trial, state=TrialState.PRUNED)
        else:
            best = max(reported.values()) if self.mode == "max" else min(reported.values())
            _guarded(self._ot_study.tell, trial, best, state=TrialState.COMPLETE)
        self._completed_trials.add(trial_id)


def _guarded(call, *args, **kwargs) -> None:
    """A study update that fails (a trial already finished in the storage, as after a kill and a
    resume from an older searcher state; a storage I/O error) is logged; the search goes on, as
    Ray's own OptunaSearch does."""
    try:
        call(*args, **kwargs)
    except Exception as e:
        logger.warning("Optuna study not updated: %s: %s", type(e).__name__, e)


def study_of(searcher: OptunaSearch):
    """The `optuna.Study` an OptunaSearch drives (to seed it with earlier trials)."""
    return searcher._ot_study
