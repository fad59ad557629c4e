"""The command line of `python -m search.run`: argv into a frozen `SearchRequest`, and back.

It only parses: what the arguments mean, and whether they are allowed, is search/preflight.py's
job. `resume_command` writes a request back as the command that continues its search.
"""
from __future__ import annotations

import argparse
import shlex
import time
from dataclasses import dataclass

DESCRIPTION = "`python -m search.run SPACE.yaml`: validate the space, split the data once, run the search."
TIME_HELP = ("the search's time budget, e.g. 10m, 90s, 1h30m (instead of search.time): trials start while they "
             "can reach their first rung in it; with --resume, the time the resumed search gets (default: what "
             "its budget has left)")


@dataclass(frozen=True)
class SearchRequest:
    """What the user asked for, as they typed it (paths and durations not yet resolved)."""

    space: str
    data: str | None = None
    storage: str = "results"
    time: str | None = None
    name: str | None = None
    overrides: tuple[str, ...] = ()
    address: str | None = None
    resume: bool = False
    study_storage: str | None = None
    warm_start: str | None = None
    mlflow: str | None = None
    dry_run: bool = False
    verbose: bool = False
    started: float = 0.0  # when the command started: a time budget counts from here


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m search.run", description=DESCRIPTION)
    p.add_argument("space", help="YAML search space, e.g. spaces/finetune.yaml")
    p.add_argument("--data", help="image folder (class subfolders, or train/ val/ test/), or a bucket's prefix of "
                   "them (s3://bucket/images/), instead of data.source")
    p.add_argument("--storage", default="results",
                   help="where results go (default: results/): a folder, or a bucket (s3://bucket/results, gs://...) "
                        "on a cluster without a shared file system")
    p.add_argument("--time", metavar="DURATION", help=TIME_HELP)
    p.add_argument("--name", help="experiment name; results in STORAGE/NAME (default: the space's name or file name)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a space entry, e.g. --set search.num_samples=4 --set data.limit_per_class=20")
    p.add_argument("--address", help="Ray cluster to join ('auto' on a cluster node); default: start one here")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted search in STORAGE/NAME: finished trials are kept, unfinished ones "
                        "continue from their last checkpoint, the sampler keeps its history")
    p.add_argument("--study-storage", metavar="URL",
                   help="write the Optuna study to this RDB (e.g. postgresql://host/db, sqlite:///study.db) "
                        "instead of RESULTS/optuna.journal")
    p.add_argument("--warm-start", metavar="RESULTS_DIR",
                   help="seed the sampler with an earlier search's finished trials (same data; knobs that "
                        "this space lacks, or whose value is out of its range, are dropped)")
    p.add_argument("--mlflow", metavar="URI", help="also log every trial to MLflow at this tracking URI "
                   "(e.g. sqlite:///mlflow.db; needs `pip install mlflow`)")
    p.add_argument("--dry-run", action="store_true",
                   help="validate and print the resolved space and data; start no Ray")
    p.add_argument("--verbose", action="store_true", help="also show Ray's and the workers' own logs")
    return p


def parse(argv=None, started: float | None = None) -> SearchRequest:
    """ARGV (default: sys.argv) as a request; argparse itself answers --help and unknown options."""
    ns = _parser().parse_args(argv)
    return SearchRequest(**{**vars(ns), "overrides": tuple(ns.overrides)},
                         started=time.time() if started is None else started)


def resume_command(request: SearchRequest, name: str) -> str:
    """The command that continues this search: where it is, its --set changes, and the cluster and
    data it ran on (the resumed search keeps its saved inputs; --data spares it preparing the space's
    default)."""
    sets = [arg for kv in request.overrides for arg in ("--set", kv)]  # the space as it ran, not as the file says
    extra = [*(["--address", request.address] if request.address else []),
             *(["--data", request.data] if request.data else [])]
    return shlex.join(["python", "-m", "search.run", request.space, *sets, "--storage", request.storage,
                       "--name", name, *extra, "--resume"])
