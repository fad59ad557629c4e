"""Keep a retried trial's records whole: every epoch it reported stays in its result.json.

When a trial fails and Tune retries it from its last checkpoint (`search.max_failures`), Tune's
loggers start the trial again by copying its `result.json` and `progress.csv` back from the
results folder over the driver's own copy (Ray 2.60, `LoggerCallback._restore_from_remote`).
The results folder's copy is only as new as Tune's last upload of the experiment (every few
seconds, or minutes on a bucket), so the epochs the trial reported since were lost: a trial
whose process was killed one epoch after an upload came back without that epoch (found by
tests/test_chaos.py). `KeepTrialLogs` uploads the driver's copy as soon as Tune decides to retry
the trial, so the copy Tune takes back is the whole one.
"""
from __future__ import annotations

import logging
from pathlib import Path

from ray import tune

from trainables import ray_internals

logger = logging.getLogger(__name__)

# the per-trial files Tune's default loggers append to and copy back on a retry
APPENDED = ("result.json", "progress.csv")


class KeepTrialLogs(tune.Callback):
    """On a trial's retry, upload its result.json and progress.csv to the results folder."""

    def on_trial_recover(self, iteration: int, trials: list, trial, **info) -> None:
        import pyarrow.fs

        filesystem, remote_dir = ray_internals.trial_remote_dir(trial)
        for name in APPENDED:
            local = ray_internals.trial_local_dir(trial) / name
            if not local.is_file():
                continue
            try:
                pyarrow.fs.copy_files(str(local), Path(remote_dir, name).as_posix(),
                                      destination_filesystem=filesystem)
            except Exception as e:  # the retry still runs; Tune then restores the older copy
                logger.warning("could not save %s of trial %s before its retry: %s", name, trial.trial_id, e)
