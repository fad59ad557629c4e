"""What a search prints when it ends, and the exit status it ends with.

`print_data_summary` is the data report shown before the search starts; `print_outcome` the
counts, the leaderboard, the failures, the next commands and, for an interrupted search, the
--resume command; `exit_status` says 0, 1 (every trial failed or was over the constraints) or
130 (interrupted: the search can be resumed).
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from search import results_folder
from search.cli import SearchRequest, resume_command
from search.duration import say
from search.record import SearchRecord
from trainables.data import dataset

EXIT_INTERRUPTED = 130  # as a shell reports a Ctrl-C


@dataclass(frozen=True)
class SearchOutcome:
    """How a search went, as search/launch.py's run_search leaves it."""

    request: SearchRequest
    name: str
    results: str  # the results folder, or its URI
    record: SearchRecord
    table: object  # trials.csv as a pandas DataFrame
    csv_path: Path | str  # where trials.csv is (its URI, once uploaded to a bucket)
    elapsed: float  # seconds of trials: from the Tuner's start to its return
    finished: int  # trials that ended (not unfinished)
    interrupted: bool  # stopped before all its trials ran: --resume continues it
    slots: int  # trials at once


def print_data_summary(summ: dict) -> None:
    """The data report: what was found, how it is split, and everything that was skipped or odd."""
    c = summ["counts"]
    print(f"data: {summ['root']} — {summ['images']} images, {len(summ['classes'])} classes"
          f"{' (pre-split)' if summ['presplit'] else ''}, imbalance ratio {summ['imbalance_ratio']}")
    width = max(len(k) for k in summ["classes"])
    print(f"  {'class':<{width}}  " + "  ".join(f"{s:>5}" for s in dataset.SPLITS))
    for k in summ["classes"]:
        print(f"  {k:<{width}}  " + "  ".join(f"{c[s][k]:>5}" for s in dataset.SPLITS))
    print(f"  {'total':<{width}}  " + "  ".join(f"{sum(c[s].values()):>5}" for s in dataset.SPLITS))
    dup = summ["duplicates"]
    if dup["duplicate_groups"]:
        print(f"  {dup['duplicate_images']} byte-identical images in {dup['duplicate_groups']} groups, "
              f"{dup['groups_across_splits']} groups across splits (each group is kept in one split)")
    conflicts = summ["conflicting_labels"]
    if conflicts["groups"]:
        what = ("dropped (their label is unknowable; data.conflicting_labels: keep keeps them)" if conflicts["dropped"]
                else "kept, each copy with its own label, all copies in one split (data.conflicting_labels: keep)")
        print(f"  {conflicts['images']} identical images in {conflicts['groups']} groups carry different labels, "
              f"{what}:")
        for group in conflicts["examples"][:10]:
            print("    " + " = ".join(f"{g['path']} ({g['label']})" for g in group))
        if conflicts["groups"] > 10:
            print(f"    ... {conflicts['groups'] - 10} more groups in data.json")
    ignored = summ.get("ignored", [])
    for why in sorted({i["why"] for i in ignored}):
        paths = [i["path"] for i in ignored if i["why"] == why]
        print(f"  ignored {len(paths)} ({why}): " + "; ".join(paths[:5]) + (" ..." if len(paths) > 5 else ""))
    for label, paths in (("non-image files", summ["skipped_non_images"]),
                         ("unreadable images",
                          [f"{u['path']} ({u['error'][:160]})" for u in summ["unreadable_images"]])):
        if paths:
            print(f"  skipped {len(paths)} {label}: " + "; ".join(paths[:5]) + (" ..." if len(paths) > 5 else ""))


def time_line(table, elapsed: float, slots: int, time_s: float | None) -> str:
    """How the time went: trials started, epochs trained, and the time the SLOTS trial slots
    (trials at once) stood idle over the ELAPSED seconds of trials (starting and stopping
    trials counts as idle)."""
    epochs = int(table["epochs_run"].sum()) if "epochs_run" in table else 0
    busy = float(table["trial_seconds"].fillna(0).sum()) if "trial_seconds" in table else 0.0
    idle = max(0.0, slots * elapsed - busy)
    share = idle / (slots * elapsed) if elapsed > 0 else 0.0
    return (f"time: {len(table)} trials started, {epochs} epochs trained in {say(elapsed)}"
            + (f" of a {say(time_s)} budget" if time_s else "")
            + f"; {slots} trial slot(s), idle {say(idle)} in all ({share:.0%})")


def print_outcome(o: SearchOutcome) -> None:
    """The end of a search: counts, the top of the leaderboard, failures, next commands, and for
    an interrupted search the --resume command."""
    record, table, results = o.record, o.table, o.results
    print(f"\nsearch {'interrupted' if o.interrupted else 'finished'} after {o.elapsed:.0f}s of trials, "
          f"{time.time() - o.request.started:.0f}s wall time in all: "
          + ", ".join(f"{v} {k}" for k, v in table["status"].value_counts().items()))
    print(time_line(table, o.elapsed, o.slots, record.time_s))
    print(results_folder.format_board(results_folder.leaderboard(table, record), record, top=5))
    rejected = int((table["status"] == "rejected").sum()) if "status" in table else 0
    if rejected:
        print(f"{rejected} configuration(s) over search.constraints were not trained; the sampler was told "
              "they are infeasible")
    front = results_folder.format_front(table, record)
    if front:
        print(front)
    failed = table[table["status"].isin(["error", "diverged"])]
    if not failed.empty:
        print(f"\n{len(failed)} trial(s) failed; the search went on without them:")
        for _, t in failed.iterrows():
            print(f"  {t['trial_id']} {t['status']}: {t['error']}\n    traceback: {t['error_file']}")
    print(f"\nresults: {results}\n  trials: {o.csv_path}\n"
          f"  next: python -m analysis.rank {results}\n        python -m analysis.retrain {results}\n"
          f"        python -m analysis.report {results}")
    if o.interrupted:
        print(f"\n{results_folder.describe_trials({'finished': o.finished, 'num_samples': record.num_samples})}; "
              "continue the search with:\n"
              f"  {resume_command(o.request, o.name)}", flush=True)


def exit_status(o: SearchOutcome) -> int:
    """0, or 1 when no trial gave a usable model (each line says why), or 130 when interrupted."""
    table = o.table
    if o.interrupted:
        return EXIT_INTERRUPTED
    if not table.empty and (table["status"] == "rejected").all():
        print(f"error: every configuration was over search.constraints ({table['infeasible'].iloc[0]}, ...); "
              "loosen them, or search smaller models or images", file=sys.stderr)
        return 1
    if not table.empty and table["status"].isin(["rejected", "error", "diverged"]).all():
        rejected = int((table["status"] == "rejected").sum())
        failed = table[table["status"] != "rejected"]
        print(f"error: every trial failed{f' or was over search.constraints ({rejected})' if rejected else ''}; "
              f"most common reason: {failed['error'].mode().iloc[0]}", file=sys.stderr)
        return 1
    return 0
