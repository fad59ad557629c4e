"""Read Tune's records of a search from plain JSON files only: never its pickles.

A results folder may come from someone else. Tune's own reader (`ExperimentAnalysis`) rebuilds
its trials with cloudpickle, so ranking such a folder would run whatever code it holds. Here
every file is read with `json`:
- `experiment_state-*.json` (the newest): each trial's id, status and folder. Its pickled fields
  are hex strings inside the JSON, which this module never decodes.
- each trial folder's `params.json` (the trial's config) and `result.json` (one JSON line per
  report).

Which file names Tune writes is Ray's layout, named in `trainables.ray_internals`;
`tests/test_end_to_end.py` checks the keys against a real search, so that an upgrade that
changes them fails a test, not a user.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from trainables.ray_internals import CHECKPOINT_DIR_NAME, ERROR_FILE, LAST_RESULT, PARAMS_FILE, RESULTS_FILE, STATE_GLOB

FINISHED = ("TERMINATED", "ERROR")


@dataclass
class TrialRecord:
    """One trial as Tune recorded it: status is Tune's (PENDING, RUNNING, PAUSED, TERMINATED,
    ERROR); reports has one row per report, in the order they came."""
    trial_id: str
    status: str
    path: Path
    config: dict = field(default_factory=dict)
    reports: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def error_file(self) -> Path | None:
        p = self.path / ERROR_FILE
        return p if p.is_file() else None


def has_state(results_dir: str | Path) -> bool:
    return any(Path(results_dir).glob(STATE_GLOB))


def _newest_state(results_dir: Path) -> dict:
    files = sorted(results_dir.glob(STATE_GLOB))  # named by start time: the last is the newest
    if not files:
        raise FileNotFoundError(f"{results_dir}: no {STATE_GLOB}")
    return json.loads(files[-1].read_text())


def _trial_state(entry) -> dict:
    """One `trial_data` entry: [trial state JSON, run metadata JSON], as Ray 2.x writes it."""
    return json.loads(entry[0] if isinstance(entry, (list, tuple)) else entry)


def last_saved_reports(results_dir: str | Path) -> dict[str, dict]:
    """{trial folder: its last report as Tune's newest saved state has it} for every trial that
    has not finished and saved a checkpoint with that report (Tune restores it from that
    checkpoint, `CHECKPOINT_DIR_NAME`). Read from the run metadata's JSON: the checkpoint
    manager itself is a pickle, never read here."""
    out = {}
    for entry in _newest_state(Path(results_dir)).get("trial_data", []):
        s = _trial_state(entry)
        meta = json.loads(entry[1]) if isinstance(entry, (list, tuple)) and len(entry) > 1 else {}
        last = meta.get(LAST_RESULT) or {}
        last = json.loads(last) if isinstance(last, str) else last
        if s.get("status") not in FINISHED and isinstance(last, dict) and last.get(CHECKPOINT_DIR_NAME):
            out[s.get("relative_logdir") or f"trial_{s['trial_id']}"] = last
    return out


def read_reports(trial_dir: Path) -> pd.DataFrame:
    """A trial's reports from result.json; a line cut short by a kill is skipped."""
    rows = []
    p = trial_dir / RESULTS_FILE
    if p.is_file():
        for line in p.read_text(errors="replace").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return pd.DataFrame(rows)


def read_config(trial_dir: Path, fallback) -> dict:
    """A trial's hyperparameters: its params.json, else (none, or a damaged one) FALLBACK, the
    config Tune's experiment state holds."""
    config = fallback if isinstance(fallback, dict) else {}
    p = trial_dir / PARAMS_FILE
    if p.is_file():
        try:
            config = json.loads(p.read_text())
        except json.JSONDecodeError:
            pass
    return config


def read_trials(results_dir: str | Path) -> list[TrialRecord]:
    """Every trial of the search in RESULTS_DIR, as its newest experiment state lists them."""
    results_dir = Path(results_dir)
    trials = []
    for entry in _newest_state(results_dir).get("trial_data", []):
        s = _trial_state(entry)
        path = results_dir / (s.get("relative_logdir") or f"trial_{s['trial_id']}")
        trials.append(TrialRecord(trial_id=s["trial_id"], status=s.get("status", "PENDING"), path=path,
                                  config=read_config(path, s.get("config")), reports=read_reports(path)))
    return trials
