"""Every check of a search request that can run before Ray starts, in one place.

`check(request)` validates the space, prepares the data (scan, split, summary), and checks the
results folder, the study options and the extras asked for. Whatever is wrong raises
`search.errors.UserError` (one line; `search.space.SpaceError` for the space file), never
later, mid-search. What the checks found comes back as a `Preflight`, which the launch reads.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from search import remote_results, results_folder
from search import space as space_mod
from search import study as study_mod
from search.cli import SearchRequest
from search.duration import parse_duration
from search.errors import UserError
from search.location import ResultsLocation
from search.record import SearchRecord
from trainables.context import TrialContext
from trainables.data import cache_budget, dataset
from trainables.storage import remote


@dataclass(frozen=True)
class Preflight:
    """A request checked before Ray starts, with what the checks found."""

    request: SearchRequest
    spec: space_mod.SpaceFile
    name: str
    index: dataset.DataIndex
    location: ResultsLocation
    state: dict | None = None  # the search already in the results folder (only with --resume)
    warm_start_dir: str | None = None  # --warm-start's results folder here (a bucket's: this machine's copy)
    resumed: tuple[SearchRecord, TrialContext] | None = None  # with --resume: the inputs it started with


def check(request: SearchRequest) -> Preflight:
    """Check REQUEST as far as it can be without Ray (for --dry-run: the space and data only).
    Raises UserError."""
    from trainables.data.images import DataError
    from trainables.models.registry import ModelError

    try:
        spec, name, location, index = _space_and_data(request)
        state = warm = resumed = None
        if not request.dry_run:
            state, resumed = _results_folder(request, location)
            warm = _study_options(request, name, spec)
        _extras(request)
    except (DataError, ModelError, remote.StorageError) as e:
        raise UserError(str(e)) from None
    return Preflight(request, spec, name, index, location, state, warm, resumed)


def _space_and_data(request: SearchRequest) -> tuple:
    """Validate the space and --storage (its results location), then prepare the data; nothing started."""
    overrides = list(request.overrides) + ([f"data.source={json.dumps(request.data)}"] if request.data else [])
    if request.time is not None:
        try:
            overrides.append(f"search.time={parse_duration(request.time)}")
        except ValueError as e:
            raise UserError(f"--time: {e} (got {request.time!r})") from None
    spec = space_mod.load(request.space, overrides)
    name = request.name or spec.name or Path(request.space).stem
    location = ResultsLocation.of(request.storage, name)  # a bad --storage is said before the data is prepared
    d = spec.data
    try:
        cache_budget.cap_bytes(d.cache_max_gb)  # a bad HPO_CACHE_MAX_GB is found before anything starts
    except cache_budget.CacheFull as e:
        raise UserError(str(e)) from None
    fractions = d.split.model_dump(exclude={"seed"})
    index = dataset.prepare(d.source, fractions, d.split.seed, d.limit_per_class, d.cache_dir, d.conflicting_labels,
                            stream=sys.stdout)
    space_mod.check_classes(request.space, spec, index.classes)
    space_mod.check_pretrained_weights(request.space, spec)
    return spec, name, location, index


def _results_folder(request: SearchRequest, location: ResultsLocation) -> tuple:
    """STORAGE/NAME must be new, or hold an unfinished search when --resume is given; a bucket's
    must take writes. For --resume, the search already there: its state, and its record and
    context (the inputs it started with, read here once, before Ray starts); else (None, None)."""
    try:
        location.check_writable()
        location.fetch()
    except remote.StorageError as e:
        raise UserError(f"--storage {e}") from None
    results = location.results
    try:
        state = results_folder.search_state(location.local)
    except results_folder.ResultsError as e:  # a folder of another hpo-finetune, or a damaged one
        raise UserError(str(e)) from None
    if state and not request.resume:
        hint = ("add --resume to continue it" if state["unfinished"]
                else "pick another --name, or delete that folder")
        raise UserError(f"{results} already holds a search ({results_folder.describe_trials(state)}); {hint}")
    if not request.resume:
        return state, None
    if not state:
        raise UserError(f"--resume: {results} holds no search to resume")
    try:
        record, context = results_folder.read_record(location.local), results_folder.read_context(location.local)
    except results_folder.ResultsError as e:
        raise UserError(f"--resume: {e}") from None
    if request.time is not None and not record.time_s:
        raise UserError(f"--time: the search in {results} ran without a time budget; resume it "
                        "without --time (it runs its remaining trials)")
    return state, (record, context)


def _study_options(request: SearchRequest, name: str, spec) -> str | None:
    """--warm-start and --study-storage; the warm start's results folder here."""
    warm = request.warm_start
    if warm and request.resume:
        raise UserError("--warm-start: a resumed search keeps its own study; drop --warm-start")
    if warm and remote.is_uri(warm):  # an earlier search in a bucket: its records, here
        try:
            warm = str(remote_results.pull(warm.rstrip("/")))
        except remote.StorageError as e:
            raise UserError(f"--warm-start {e}") from None
    if warm:
        _check_warm_start(warm, spec)
    if request.study_storage and not request.resume:
        _check_study_storage(request.study_storage, name)
    return warm


def _check_warm_start(previous_dir: str, spec) -> None:
    try:
        prev = results_folder.read_record(previous_dir)
    except results_folder.ResultsError as e:
        raise UserError(f"--warm-start: {e}") from None
    if study_mod.uses_rdb(prev.study_storage):
        raise UserError(f"--warm-start {previous_dir}: its study is in a database ({prev.study_storage}); "
                        f"warm start reads a results folder's {study_mod.JOURNAL_FILE}")
    try:
        study_mod.load(previous_dir, prev.name)
    except Exception as e:  # no study in it, or one Optuna cannot read
        raise UserError(f"--warm-start {previous_dir}: no readable Optuna study ({type(e).__name__}: {e})") from None
    if prev.objective_pairs != spec.search.objectives:
        raise UserError(f"--warm-start {previous_dir}: that search optimised "
                        f"{results_folder.describe_objectives(prev.objective_pairs)}, this "
                        f"one {results_folder.describe_objectives(spec.search.objectives)}; its scores "
                        "would mislead the sampler")


def _check_study_storage(url: str, name: str) -> None:
    import optuna

    try:
        shown = study_mod.storage_label(None, url)
        names = optuna.get_all_study_names(study_mod.storage(None, url))
    except Exception as e:  # a bad URL, a missing driver, a database that does not answer
        raise UserError(f"--study-storage: cannot open it ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if name in names:
        raise UserError(f"--study-storage {shown}: a study named {name!r} is already there; pick another --name")


def _extras(request: SearchRequest) -> None:
    """The optional packages the request needs are installed."""
    if request.mlflow:
        import importlib.util

        if importlib.util.find_spec("mlflow") is None:
            raise UserError("--mlflow: the mlflow package is not installed; pip install mlflow")
