"""Console progress: one line per trial event, readable while a search runs for hours.

Tune's own table is switched off (verbose=0) and custom ProgressReporters are ignored by its
new output engine, so progress is a `tune.Callback`.
"""
from __future__ import annotations

import math
import sys
import time

from ray.tune import Callback

from search import budget
from search.duration import say
from search.results_folder import classify_error_file

SHOWN_KNOBS_LIMIT = 8


def knobs_of(config: dict) -> str:
    items = list(config.items())[:SHOWN_KNOBS_LIMIT]
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in items)


class ProgressPrinter(Callback):
    """Each line starts with the time since the trials began, with a time budget the time it has
    left, and the best value of METRIC reported so far: `[    63s, 3m50s left, best 0.9513]`."""

    def __init__(self, metric: str, mode: str, num_samples: int | None):
        self.metric, self.mode = metric, mode
        self.num_samples = num_samples  # None: as many as the time budget allows
        self.start = time.time()
        self.done = 0
        self.best: float | None = None

    def _say(self, text: str) -> None:
        left = budget.CLOCK.left()
        when = f"{time.time() - self.start:6.0f}s" + ("" if left is None else f", {say(max(0, left))} left")
        best = "" if self.best is None else f", best {self.best:.4f}"
        # sys.stdout is looked up on each call, not bound once, because Tune pickles callbacks
        print(f"[{when}{best}] {text}", file=sys.stdout, flush=True)

    def _count(self) -> str:
        return f"{self.done}/{self.num_samples} done" if self.num_samples else f"{self.done} done"

    def _saw(self, value) -> None:
        if isinstance(value, (int, float)) and math.isfinite(value):
            best = self.best
            self.best = value if best is None else max(best, value) if self.mode == "max" else min(best, value)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._say(f"trial {trial.trial_id} started: {knobs_of(trial.config)}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get("infeasible"):  # said once, when it completes
            return
        self._saw(result.get(self.metric))
        extra = f" val_loss={result['val_loss']:.3f}" if "val_loss" in result and self.metric != "val_loss" else ""
        self._say(f"trial {trial.trial_id} epoch {result.get('epoch')}/{result.get('epoch_of', '?')}: "
                  f"{self.metric}={result.get(self.metric, float('nan')):.4f}{extra}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.done += 1
        last = trial.last_result or {}
        self._saw(last.get(self.metric))
        epoch, planned = last.get("epoch", 0), last.get("epoch_of", 0)
        left = budget.CLOCK.left()
        by = "the time budget" if left is not None and left <= 0 else "ASHA"
        how = f"stopped by {by} after epoch {epoch}/{planned}" if epoch < planned else f"completed {epoch} epochs"
        if last.get("infeasible"):
            how = f"not trained: {last['infeasible']} (over search.constraints)"
        self._say(f"trial {trial.trial_id} {how} ({self._count()})")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.done += 1
        status, reason = classify_error_file(trial.error_file, trial.config)
        self._say(f"trial {trial.trial_id} {'DIVERGED' if status == 'diverged' else 'FAILED'}: {reason} "
                  f"({self._count()}; the search goes on)")


class Uploader(Callback):
    """Uploads a few files of this machine's copy of a results folder to its bucket as the search
    runs (at most every EVERY_S seconds, and at the end): the Optuna journal, so that a search
    resumed elsewhere after this machine died finds the sampler's history."""

    def __init__(self, local, uri: str, names: list[str], every_s: float = 10.0):
        self.local, self.uri, self.names, self.every_s = local, uri, names, every_s
        self.last, self.warned = 0.0, False

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        if time.time() - self.last >= self.every_s:
            self._upload()

    def on_experiment_end(self, trials: list, **info) -> None:
        self._upload()

    def _upload(self) -> None:
        from search.remote_results import push
        from trainables.storage.remote import StorageError

        self.last = time.time()
        missing = [n for n in self.names if not (self.local / n).is_file()]
        if missing and not self.warned:  # e.g. resumed where the cache path differs
            self.warned = True
            print(f"warning: {', '.join(missing)} not found in {self.local}; not uploaded to {self.uri}",
                  file=sys.stderr, flush=True)
        try:
            push(self.local, self.uri, self.names)
        except (StorageError, OSError) as e:  # a storage hiccup: the next step tries again
            print(f"warning: could not upload {', '.join(self.names)} to {self.uri}: {e}", file=sys.stderr, flush=True)
