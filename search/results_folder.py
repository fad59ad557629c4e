"""A search's results folder, as the search writes it and everything after reads it.

The folder's layout and state belong to the search: its `search.json` (a
`search.record.SearchRecord`, written by `search.run.write_inputs` before the first trial;
`read_record` refuses a folder of another layout, or of an older hpo-finetune's with none, as
a whole: there is one layout to read), and Tune's trial records, read as plain JSON and CSV by
`search.tune_files`, never unpickled. From those, this module says where a search stands
(`search_state`, for `--resume`), why a trial failed (`classify_failure`, also for the live
progress lines), and builds the one table of trials (`trials_table`, `trials.csv`) and its
leaderboard that the search prints at its end and that `analysis` ranks, reports and retrains
from: with constraints, which trials are feasible (`judge`, `candidates`); with several
objectives, their Pareto front (`front`, `--pick N`). It works offline, with no Ray cluster,
so a results folder received from someone else can be read safely; only `--resume` loads
Tune's pickled state.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

from search import tune_files
from search.record import RecordVersionError, SearchRecord
from trainables.context import CONTEXT_FILE, TRAIN_RUNS, TrialContext
from trainables.models.limits import COSTS, FIGURES, describe_over, within

SEARCH_FILE = "search.json"
TRIALS_FILE = "trials.csv"


class ResultsError(ValueError):
    """The folder is not a search's results folder; the message says what was expected."""


def read_record(results_dir: str | Path) -> SearchRecord:
    """The search's record (its search.json); a folder of another layout is refused in one line."""
    p = Path(results_dir) / SEARCH_FILE
    if not p.is_file():
        raise ResultsError(f"{results_dir}: not a results folder (no {SEARCH_FILE}); give the folder "
                           f"`python -m search.run` printed at the end, e.g. results/finetune")
    try:
        return SearchRecord.from_json(p.read_text())
    except RecordVersionError as e:
        raise ResultsError(f"{results_dir} was written by {e}; run the search again, into a new folder") from None
    except ValueError as e:  # not JSON, or not a record: a damaged file
        raise ResultsError(f"{p}: damaged ({str(e).splitlines()[0]}); run the search again, into a new "
                           "folder") from None


def write_record(results_dir: str | Path, record: SearchRecord) -> Path:
    """search.json, written last of the search's inputs: a folder that has it has them all."""
    p = Path(results_dir) / SEARCH_FILE
    p.write_text(record.to_json())
    return p


_EXC_LINE = re.compile(r"^(?:[\w]+\.)*(\w*(?:Error|Exception|Diverged|Interrupt)): (.*)$")
_WRAPPERS = {"WorkerGroupError", "TrainingFailedError", "RayTaskError", "TuneError"}
# Ray's words (ray.exceptions.ActorDiedError) for a trial process gone without an exception of its
# own: killed (SIGKILL, the system's out-of-memory killer), crashed, or its machine gone
_ACTOR_DIED = ("The actor died unexpectedly", "The actor is dead because", "The actor died because its node")
_ACTOR_DIED_ERRORS = {"ActorDiedError", "RayActorError"}  # the same, as an exception line
_NODE_DIED = "its node has died"
_PID = re.compile(r"^\s*pid: (\d+)\s*$", re.M)


def _exception_lines(text: str) -> list[re.Match]:
    return [m for m in map(_EXC_LINE.match, (ln.strip() for ln in text.splitlines())) if m]


def last_failure(text: str) -> str:
    """The last failure in a trial's error.txt: a retried trial's file has one section per failure."""
    return text.rsplit("Failure # ", 1)[-1]


def _process_died(text: str) -> str | None:
    """Why the trial's process is gone, when TEXT (its last failure) is Ray saying so with no
    exception raised in the trial (a Train run's wrapper of it aside)."""
    own = [m for m in _exception_lines(text) if m.group(1) not in _WRAPPERS | _ACTOR_DIED_ERRORS]
    if own or not any(w in text for w in _ACTOR_DIED):
        return None
    if _NODE_DIED in text:
        return "the trial's node died (its machine went away, or Ray stopped there)"
    pid = _PID.search(text)
    return "the trial's process died (killed, or out of memory)" + (f", pid {pid.group(1)}" if pid else "")


def classify_failure(text: str, config: dict) -> tuple[str, str]:
    """(status, reason) of a failed trial from its traceback text: 'diverged' or 'error', and why."""
    found = _exception_lines(text)
    # a Ray Train worker's own exception line, kept whole by trainables.trial.train_loop.WorkerError
    worker = [m.group(2)[:300] for m in found if m.group(1) == "WorkerError"]
    diverged = [m.group(2) for m in found if m.group(1) == "TrialDiverged"]
    diverged += [w.split(": ", 1)[1] for w in worker if w.startswith("TrialDiverged: ")]
    if diverged:
        return "diverged", diverged[-1]
    if re.search(r"OutOfMemoryError|CUDA out of memory|\bMemoryError\b|running low on memory", text):
        return "error", (f"out of memory at batch_size={config.get('batch_size', '?')}, "
                         f"image_size={config.get('image_size', '?')}: lower them or give trials more memory")
    died = _process_died(last_failure(text))
    if died:
        return "error", died
    if worker:
        return "error", worker[-1]
    inner = [m for m in found if m.group(1) not in _WRAPPERS] or found
    if not inner:
        return "error", "unknown error (see the traceback file)"
    return "error", f"{inner[-1].group(1)}: {inner[-1].group(2)}"[:300]


def classify_error_file(path: str | Path | None, config: dict) -> tuple[str, str]:
    """classify_failure on a trial's error.txt, if there is one."""
    if not path or not Path(path).is_file():
        return "error", "error (no traceback file)"
    return classify_failure(Path(path).read_text(errors="replace"), config)


def _failure(trial: tune_files.TrialRecord) -> tuple[str, str, str]:
    """(status, reason, traceback path) of a trial Tune marked ERROR."""
    status, reason = classify_error_file(trial.error_file, trial.config)
    return status, reason, str(trial.error_file or "")


def _checkpoint_of(row: pd.Series, trial_dir: str, results_dir: Path) -> str:
    """The checkpoint folder of one report: a Ray Train run's `checkpoint_path`, or the Tune
    trial's own `checkpoint_dir_name` inside its trial folder (trials in a reused Tune actor).
    A Ray Train path elsewhere (the bucket's, when RESULTS_DIR is this machine's copy of it) is
    taken in RESULTS_DIR's own train_runs/ where it is there."""
    path = row.get("checkpoint_path")
    if isinstance(path, str) and path:
        here = results_dir / TRAIN_RUNS / path.partition(f"/{TRAIN_RUNS}/")[2]
        return str(here) if not Path(path).is_dir() and f"/{TRAIN_RUNS}/" in path and here.is_dir() else path
    name = row.get("checkpoint_dir_name")
    return str(Path(trial_dir) / name) if isinstance(name, str) and name else ""


def _read_trials(results_dir: Path) -> list[tune_files.TrialRecord]:
    try:
        return tune_files.read_trials(results_dir)
    except (OSError, ValueError, KeyError, TypeError) as e:  # no state yet, or a damaged one
        raise ResultsError(f"{results_dir}: no readable Tune experiment state "
                           f"({type(e).__name__}: {e})") from None


def read_context(results_dir: str | Path) -> TrialContext:
    """The TrialContext the search gave its trials (its data, objective and resources). The search
    writes it before search.json, so a folder `read_record` took has it, unless it was removed or
    cut short since: that is one line (ResultsError), not a traceback."""
    try:
        return TrialContext.load(results_dir)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise ResultsError(f"{results_dir}: {CONTEXT_FILE} is missing or damaged ({type(e).__name__}); "
                           "run the search again, into a new folder") from None


def search_state(results_dir: str | Path) -> dict | None:
    """None if no search ran here; else how many trials finished and whether any is left to run."""
    results_dir = Path(results_dir)
    if not (results_dir / SEARCH_FILE).is_file() or not tune_files.has_state(results_dir):
        return None
    record = read_record(results_dir)
    trials = _read_trials(results_dir)
    finished = sum(1 for t in trials if t.status in tune_files.FINISHED)
    cap = record.num_samples  # None: as many as the time budget allowed
    done = finished == len(trials) and ((cap is not None and finished >= cap) or read_budget(results_dir).get("ended"))
    return {"finished": finished, "num_samples": cap, "unfinished": not done}


BUDGET_FILE = "budget.json"  # written by search.budget.SpentRecorder as the search runs


def read_budget(results_dir: str | Path) -> dict:
    """What the search in RESULTS_DIR recorded of its time budget ({} without one): `time_s`, the
    budget; `spent_s`; `refused`, no more trials were to start; `ended`, the budget ended the search."""
    path = Path(results_dir) / BUDGET_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def describe_trials(state: dict) -> str:
    """'3 of 8 trials finished', or '3 trials finished' for a search bounded by its time budget."""
    cap = state["num_samples"]
    return f"{state['finished']} of {cap} trials finished" if cap else f"{state['finished']} trials finished"


def trials_table(results_dir: str | Path) -> pd.DataFrame:
    """One row per trial: id, status, epochs run, best objective and its epoch and checkpoint, knobs."""
    results_dir = Path(results_dir).resolve()
    record = read_record(results_dir)
    metric = record.metric
    rows = []
    for t in _read_trials(results_dir):
        df = t.reports
        row = {"trial_id": t.trial_id}
        failed = _failure(t) if t.status == "ERROR" else None
        if df.empty or metric not in df or "epoch" not in df or df[metric].isna().all():
            rejected = not failed and "infeasible" in df and df["infeasible"].notna().any()
            row.update(status=failed[0] if failed else "rejected" if rejected else
                       "unfinished" if t.status != "TERMINATED" else "no results", epochs_run=0, **_footprint(df))
            if rejected:  # over the search's limits: not trained
                row["infeasible"] = str(df["infeasible"].dropna().iloc[-1])
        else:
            df = df.sort_values("epoch", kind="stable")
            best = df[metric].max() if record.maximize else df[metric].min()
            best_i = df.index[df[metric] == best][-1]  # the latest of tied epochs: Ray keeps its checkpoint
            epochs, planned = int(df["epoch"].max()), int(df["epoch_of"].max())
            if failed:
                status = failed[0]
            elif t.status != "TERMINATED":  # still running or pending when the search was interrupted
                status = "unfinished"
            else:
                early = "early_stopped" in df and df["early_stopped"].fillna(False).astype(bool).any()
                status = "stopped" if epochs < planned and not early else "completed"
            row.update(
                status=status, epochs_run=epochs, epochs_planned=planned,
                **{record.best_column: float(df.loc[best_i, metric]), "best_epoch": int(df.loc[best_i, "epoch"])},
                checkpoint=_checkpoint_of(df.loc[best_i], str(t.path), results_dir),
                trial_seconds=float(df["time_total_s"].max()) if "time_total_s" in df else float("nan"),
                **_footprint(df),
            )
        row["error"], row["error_file"] = (failed[1], failed[2]) if failed else ("", "")
        row.update(t.config)  # the trial's hyperparameters
        row["trial_dir"] = str(t.path)
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    return judge(table.sort_values("trial_id").reset_index(drop=True), record)


def describe_objectives(objs: list[tuple[str, str]]) -> str:
    """'val_acc (max), latency_ms (min)'"""
    return ", ".join(f"{name} ({mode})" for name, mode in objs)


def describe_limits(lim: dict[str, float]) -> str:
    """'latency_ms <= 5, params_m <= 2'"""
    return ", ".join(f"{name} <= {v:g}" for name, v in lim.items())


def judge(table: pd.DataFrame, record: SearchRecord) -> pd.DataFrame:
    """The table with, for a search with constraints, `feasible` (every limited figure measured
    and within its limit) and `infeasible` (which are over); for a multi-objective one, `pareto`
    (on the `front`)."""
    lim = record.limits
    if lim:
        records = table.to_dict("records")
        table["feasible"] = [within(r, lim) for r in records]
        table["infeasible"] = [r.get("infeasible") if isinstance(r.get("infeasible"), str) and r["infeasible"]
                               else describe_over(r, lim) or ("" if ok else "not measured")
                               for r, ok in zip(records, table["feasible"])]
    if record.multi_objective:
        table["pareto"] = False
        table.loc[front(table, record)["index"], "pareto"] = True
    return table


def candidates(table: pd.DataFrame, record: SearchRecord) -> pd.DataFrame:
    """The trials a final model can come from: scored on the first objective, and feasible."""
    col = record.best_column
    if col not in table:
        return table.iloc[0:0]
    kept = table[table[col].notna()]
    return kept[kept["feasible"]] if "feasible" in kept else kept


def pareto_mask(table: pd.DataFrame, columns: list[tuple[str, str]]) -> pd.Series:
    """Whether each row is on the Pareto front of COLUMNS ((column, 'max' or 'min') pairs): no
    other row is as good on every column and better on one. Rows missing a value are not."""
    signs = [1.0 if mode == "min" else -1.0 for _, mode in columns]
    names = [c for c, _ in columns]
    if table.empty or not set(names) <= set(table):
        return pd.Series(False, index=table.index)
    values = table[names].astype(float)
    complete = values.notna().all(axis=1)
    points = (values[complete] * signs).to_numpy()
    on_front = [not ((points <= p).all(axis=1) & (points < p).any(axis=1)).any() for p in points]
    return pd.Series(on_front, index=values.index[complete], dtype=bool).reindex(table.index, fill_value=False)


def front(table: pd.DataFrame, record: SearchRecord) -> pd.DataFrame:
    """The Pareto front of the search's objectives among the completed `candidates` (as Optuna's
    own front holds COMPLETE trials only: a trial ASHA stopped after one epoch is fast and
    inaccurate, not a trade-off), best first on the first objective: row N-1 is what
    `analysis.retrain --pick N` takes. Its `index` column is each row's index in TABLE."""
    kept = candidates(table, record)
    if kept.empty:
        return kept.reset_index()
    kept = kept[kept["status"] == "completed"] if "status" in kept else kept
    columns = record.objective_columns
    on = kept[pareto_mask(kept, columns)]
    keys = [c for c, _ in columns] + (["trial_id"] if "trial_id" in on else [])  # ties: the same order always
    return on.sort_values(keys, ascending=[m == "min" for _, m in columns] + [True] * (len(keys) - len(columns)),
                          kind="stable").reset_index()


def _footprint(reports: pd.DataFrame) -> dict:
    """What the trial's model costs to run (trainables.models.footprint), from its last report that has them."""
    return {c: float(reports[c].dropna().iloc[-1]) for c in FIGURES if c in reports and reports[c].notna().any()}


def leaderboard(table: pd.DataFrame, record: SearchRecord) -> pd.DataFrame:
    """Trials ranked best first by their best objective, feasible ones (under the search's
    constraints) before infeasible ones; trials without results go last."""
    col = record.best_column
    if col not in table:
        return table
    # ties on the objective go to the cheaper model (the one a tie's users would deploy)
    costs = [c for c in ("latency_ms", "params_m") if c in table]
    board = table.sort_values([col, *costs], ascending=[not record.maximize, *[True] * len(costs)], kind="stable",
                              na_position="last")
    if "feasible" in board:  # scored feasible, scored infeasible, then those without a score
        order = board[col].isna() * 2 + ~board["feasible"].astype(bool)
        board = board.iloc[order.argsort(kind="stable")]
    return board.reset_index(drop=True)


def write_trials_csv(results_dir: str | Path) -> tuple[pd.DataFrame, Path]:
    table = trials_table(results_dir)
    out = Path(results_dir) / TRIALS_FILE
    table.to_csv(out, index=False)
    return table, out


def ranked_with_results(results_dir: str | Path, record: SearchRecord) -> pd.DataFrame:
    """The leaderboard restricted to trials that reported the objective, best first (never empty)."""
    board = leaderboard(trials_table(results_dir), record)
    col = record.best_column
    trained = col in board and board[col].notna().any()
    rejected = "status" in board and (board["status"] == "rejected").any()
    if not trained and not rejected:
        raise ResultsError(f"{results_dir}: no trial reported {record.metric}; nothing to rank or retrain")
    kept = candidates(board, record)
    if kept.empty:
        raise ResultsError(f"{results_dir}: no trained trial meets the search's constraints "
                           f"({describe_limits(record.limits)}); see "
                           "`python -m analysis.rank` for how far over each was, then search again with looser "
                           "search.constraints or smaller models")
    return kept


def format_board(board: pd.DataFrame, record: SearchRecord, top: int = 10) -> str:
    knobs = [k for k in record.knobs if k in board]
    cols = ["trial_id", "status", "epochs_run", record.best_column, "best_epoch", *COSTS, "feasible",
            "pareto"] + knobs + ["infeasible"]
    cols = [c for c in cols if c in board]
    shown = board[cols].head(top).copy()
    for c in ("feasible", "pareto"):  # a mark, not True/False
        if c in shown:
            shown[c] = shown[c].map({True: "yes", False: "-" if c == "pareto" else "NO"})
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.float_format", "{:.4g}".format):
        return shown.to_string(index=False, na_rep="-")


def format_front(table: pd.DataFrame, record: SearchRecord) -> str:
    """The Pareto front, numbered as `analysis.retrain --pick N` takes it ('' for one objective)."""
    if not record.multi_objective:
        return ""
    on = front(table, record)
    if on.empty:
        return "Pareto front: no completed trial within the constraints"
    cols = ["trial_id", *(c for c, _ in record.objective_columns), *COSTS]
    shown = on[list(dict.fromkeys(c for c in cols if c in on))].copy()
    shown.insert(0, "pick", range(1, len(on) + 1))
    with pd.option_context("display.width", 200, "display.float_format", "{:.4g}".format):
        return "Pareto front (analysis.retrain --pick N):\n" + shown.to_string(index=False, na_rep="-")

