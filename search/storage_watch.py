"""Stop a search whose bucket stopped answering, with one line that says how to go on.

Every request to the bucket waits out an outage up to `trainables.storage.remote.OUTAGE_LIMIT_S` (the AWS
SDK retries it), in the driver and in the trials alike, so a storage server that restarts costs
the search only the wait. Past the limit a request fails: in a trial, the trial fails because
it could not save its checkpoint; in the driver, Tune logs the failed upload of its state (with
a traceback, every few seconds) and goes on without the bucket. `StorageWatch` turns that into
one line and a stop (`remote.StorageUnreachable`), after which `--resume` continues from what
the bucket last received. It stops the search when its own check of the bucket, which waits
the whole limit, gets no answer: every PROBE_EVERY_S, at the end, and at once when a trial
failed because the storage did not answer.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from ray import tune

from search.results_folder import last_failure
from trainables import ray_internals
from trainables.storage import remote

PROBE_EVERY_S = 30.0  # how often the driver checks that the bucket answers
# Ray 2.60's loggers for a failed upload of the experiment (with tracebacks); the watch says it once
RAY_SYNC_LOGGERS = ("ray.tune.execution.experiment_state", "ray.train._internal.syncer", "ray.train._internal.storage",
                    "ray.tune.logger.logger")


class StorageWatch(tune.Callback):
    """Raises StorageUnreachable when the bucket of URI did not answer for the outage limit;
    RESUME is the command that continues the search."""

    def __init__(self, uri: str, resume: str, quiet: bool = True, every_s: float = PROBE_EVERY_S):
        self.uri, self.resume, self.quiet, self.every_s = uri, resume, quiet, every_s
        self.last = time.time()

    def setup(self, **info) -> None:
        if self.quiet:
            for name in RAY_SYNC_LOGGERS:
                logging.getLogger(name).setLevel(logging.CRITICAL)

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        if time.time() - self.last >= self.every_s:
            self._probe()

    def on_trial_recover(self, iteration: int, trials: list, trial, **info) -> None:
        self._check(trial)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._check(trial)

    def on_experiment_end(self, trials: list, **info) -> None:
        self._probe()

    def _check(self, trial) -> None:
        """A trial that failed because the storage did not answer (its last failure in error.txt)."""
        try:
            text = last_failure(Path(ray_internals.trial_error_file(trial)).read_text(errors="replace"))
        except (OSError, TypeError):  # no error file
            return
        if remote.unreachable(text):  # then the driver asks too, waiting the limit itself: if it
            self._probe()             # gets an answer, the storage is back and the search goes on

    def _probe(self) -> None:
        self.last = time.time()
        try:
            f, path = remote.split(self.uri)
            f.get_file_info(path)
        except (OSError, remote.StorageError) as e:
            if remote.unreachable(str(e)):
                ray_internals.abandon_running_trials()  # their failures to save come after our one line
                raise remote.StorageUnreachable(
                    f"object storage {self.uri} unreachable for over {remote.outage_limit_s():g} s; check it, "
                    f"then continue the search with: {self.resume}") from None
