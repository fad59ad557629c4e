"""A search's time budget: the user says minutes, the search spends them.

The budget counts from the start of the command (what the user's own clock says). The search
starts a new trial only while that trial can still reach its first ASHA rung before the
deadline (estimated from the first rungs of the trials before it), so no trial is started to
be thrown away. At the deadline each running trial stops at its next report, so the search
ends no later than one epoch of its slowest running trial past the budget, and the epochs in
flight are not lost. (A trial already suggested but waiting for a free slot, as on a cluster
still adding nodes, runs its first epoch when it gets one.) A few seconds are kept back for
writing the results and stopping Ray.

The deadline lives in this module, in the driver process: the searcher (may it start a trial?),
the stopper (must this trial stop?) and the progress line read it. Tune pickles the stopper
and the searcher with its state, and `--resume` restarts the clock with the budget left:
`start` sets it for this process, `budget.json` in the results folder remembers what was spent.
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

from ray import tune

from search.results_folder import BUDGET_FILE

WRAP_UP_S = 5.0  # kept back at the end: trials.csv, the study closed, Ray shut down


class _Clock:
    """This process's budget: when trials must end, and how long a trial takes to its first rung."""

    def __init__(self):
        self.seconds: float | None = None
        self.started = 0.0
        self.deadline: float | None = None
        self.spent_before = 0.0  # by the run(s) this one resumes
        self.first_rungs: list[float] = []
        self.refused = False  # the searcher was told to start no more trials

    def start(self, seconds: float | None, started: float, spent: float = 0.0, refused: bool = False) -> None:
        self.seconds, self.started, self.spent_before = seconds, started, spent
        self.first_rungs, self.refused = [], refused
        self.deadline = None if seconds is None else started + seconds - spent - WRAP_UP_S

    def spent(self) -> float:
        return self.spent_before + time.time() - self.started

    def left(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.time()

    def may_start_trial(self) -> bool:
        """Whether a new trial would reach its first rung before the deadline."""
        if self.deadline is None:
            return True
        expected = statistics.median(self.first_rungs) if self.first_rungs else 0.0
        ok = time.time() + expected < self.deadline
        self.refused |= not ok
        return ok

    def saw_first_rung(self, seconds: float) -> None:
        self.first_rungs.append(seconds)


CLOCK = _Clock()


def start(seconds: float | None, started: float | None = None, spent: float = 0.0, refused: bool = False) -> None:
    """Start this process's budget of SECONDS (None: no budget), counted from STARTED, SPENT of
    it already spent and, REFUSED, its searcher already told to start no more trials (a resumed
    search: Tune restores that searcher finished)."""
    CLOCK.start(seconds, time.time() if started is None else started, spent, refused)


def may_start_trial() -> bool:
    """The searcher asks before each new trial (search.searcher.EpochOptunaSearch)."""
    return CLOCK.may_start_trial()


class BudgetStopper(tune.Stopper):
    """Stops each trial at its first report after the deadline; learns how long a trial takes to
    reach ASHA's first rung (GRACE epochs) from the reports it sees."""

    def __init__(self, grace: int):
        self.grace = grace

    def __call__(self, trial_id: str, result: dict) -> bool:
        if result.get("epoch") == self.grace and result.get("time_total_s") is not None:
            CLOCK.saw_first_rung(float(result["time_total_s"]))
        left = CLOCK.left()
        return left is not None and left <= 0

    def stop_all(self) -> bool:
        return False  # never mid-epoch: each trial stops at its own next report


class SpentRecorder(tune.Callback):
    """Writes what the search has spent of its budget into its results folder as it runs (at
    most every EVERY_S seconds, and at the end), for `--resume` after a crash or a kill."""

    def __init__(self, results_dir: str | Path, every_s: float = 5.0):
        self.results_dir, self.every_s = str(results_dir), every_s
        self.last, self.warned = 0.0, False

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        if time.time() - self.last >= self.every_s:
            self.write()

    def on_experiment_end(self, trials: list, **info) -> None:
        self.write(ended=CLOCK.refused and all(t.is_finished() for t in trials))

    def write(self, ended: bool = False) -> None:
        self.last = time.time()
        record = {"time_s": CLOCK.seconds, "spent_s": round(CLOCK.spent(), 1), "refused": CLOCK.refused,
                  "ended": ended}
        path = Path(self.results_dir) / BUDGET_FILE
        try:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(record))
            tmp.replace(path)
        except OSError as e:  # e.g. resumed where this machine's copy of the results is elsewhere
            if not self.warned:
                self.warned = True
                print(f"warning: could not record the time spent in {path}: {e}", file=sys.stderr, flush=True)
