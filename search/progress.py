"""Console progress: one line per trial event, readable while a search runs for hours.

Tune's own table is switched off (verbose=0) and custom ProgressReporters are ignored by its
new output engine, so progress is a `tune.Callback`.
"""
from __future__ import annotations

import sys
import time

from ray.tune import Callback

from search.results_folder import classify_error_file

SHOWN_KNOBS_LIMIT = 8


def knobs_of(config: dict) -> str:
    items = list(config.items())[:SHOWN_KNOBS_LIMIT]
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in items)


class ProgressPrinter(Callback):
    def __init__(self, metric: str, num_samples: int):
        self.metric = metric
        self.num_samples = num_samples
        self.start = time.time()
        self.done = 0

    def _say(self, text: str) -> None:
        # sys.stdout is looked up on each call, not bound once, because Tune pickles callbacks
        print(f"[{time.time() - self.start:6.0f}s] {text}", file=sys.stdout, flush=True)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._say(f"trial {trial.trial_id} started: {knobs_of(trial.config)}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get("infeasible"):  # said once, when it completes
            return
        extra = f" val_loss={result['val_loss']:.3f}" if "val_loss" in result and self.metric != "val_loss" else ""
        self._say(f"trial {trial.trial_id} epoch {result.get('epoch')}/{result.get('epoch_of', '?')}: "
                  f"{self.metric}={result.get(self.metric, float('nan')):.4f}{extra}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.done += 1
        last = trial.last_result or {}
        epoch, planned = last.get("epoch", 0), last.get("epoch_of", 0)
        how = f"stopped by ASHA after epoch {epoch}/{planned}" if epoch < planned else f"completed {epoch} epochs"
        if last.get("infeasible"):
            how = f"not trained: {last['infeasible']} (over search.constraints)"
        self._say(f"trial {trial.trial_id} {how} ({self.done}/{self.num_samples} done)")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.done += 1
        status, reason = classify_error_file(trial.error_file, trial.config)
        self._say(f"trial {trial.trial_id} {'DIVERGED' if status == 'diverged' else 'FAILED'}: {reason} "
                  f"({self.done}/{self.num_samples} done; the search goes on)")


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
        from trainables.remote import StorageError

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
