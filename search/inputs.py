"""What a search writes before its first trial, and what every trial gets besides its config.

`write_inputs` saves the resolved space, the split, the data summary, the trials' context and,
last, the search's record (search.json); `trial_context` is the one builder of the
`TrialContext`; `warm_cache` decodes the images before any trial. The bench scripts call these
too, as a script of a user's own would.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from search import results_folder
from search import space as space_mod
from search import study as study_mod
from search.location import under
from search.record import AshaSettings, Objective, SearchRecord
from trainables.context import CONTEXT_FILE, FOOTPRINTS_DIR, TRAIN_RUNS, TrialContext
from trainables.data import dataset
from trainables.params import TrialParams
from trainables.storage import remote

# what write_inputs saves, search.json last
INPUT_FILES = ["space.yaml", "split.csv", "data.json", CONTEXT_FILE, results_folder.SEARCH_FILE]


def write_inputs(exp_dir: Path, spec, index, name: str, study_url: str | None = None,
                 results: str = "") -> tuple[SearchRecord, TrialContext]:
    """Save what the search used, before it starts: resolved space, split, data summary, the
    trials' context and, last, the search's record (search.json), into EXP_DIR (this machine's
    copy, when the search keeps its RESULTS in a bucket).

    The record holds, resolved, what analysis needs of the space (each knob's Optuna
    distribution, ASHA's settings, the resources): analysis reads it, never the space again."""
    from optuna.distributions import distribution_to_json

    results = results or str(exp_dir)
    exp_dir.mkdir(parents=True, exist_ok=True)
    (exp_dir / "space.yaml").write_text(space_mod.describe(spec))
    dataset.save_split(index, exp_dir / "split.csv")
    (exp_dir / "data.json").write_text(json.dumps(dataset.summary(index), indent=2))
    s = spec.search
    record = SearchRecord(
        name=name, objectives=tuple(Objective(*o) for o in s.objectives), limits=s.constraints.limits(),
        knobs=tuple(k for k, kb in spec.knobs.items() if kb.kind != "const"),
        distributions={k: json.loads(distribution_to_json(d)) for k, d in study_mod.distributions(spec).items()},
        scheduler=AshaSettings(max_t=spec.max_epochs(), grace_period=s.scheduler.grace_period,
                               reduction_factor=s.scheduler.reduction_factor),
        resources=spec.resources, max_epochs=spec.max_epochs(), num_samples=s.max_trials, time_s=s.time,
        study_storage=study_mod.storage_label(exp_dir, study_url), data_root=str(index.location),
        split_file=under(results, "split.csv"), class_names=tuple(index.classes), results=results)
    context = trial_context(spec, index.location, index.classes, record.split_file, results)
    context.save(exp_dir)
    (exp_dir / study_mod.JOURNAL_FILE).unlink(missing_ok=True)  # a study of a search killed before it began
    results_folder.write_record(exp_dir, record)
    return record, context


def trial_context(spec, data_root, class_names: list[str], split_file, results) -> TrialContext:
    """What every trial of this search gets besides its hyperparameters. The one builder: the
    search saves it in the results folder (--resume, analysis.retrain and analysis.report read
    it), and the bench scripts call it too.

    RESULTS is the results folder, or its URI: then nothing a trial reads is a path of this
    machine; each node decodes into its own cache (data.cache_dir if the space sets one) and
    shares footprints there."""
    results = str(results)
    in_bucket = remote.is_uri(results) or remote.is_uri(str(data_root))
    cache_dir = ("" if in_bucket and not spec.data.cache_dir else
                 str(Path(spec.data.cache_dir or dataset.default_cache_dir()).expanduser().resolve()))
    return TrialContext(
        data_root=str(data_root), split_file=str(split_file), class_names=tuple(class_names),
        metric=spec.search.asha_metric, mode=spec.search.asha_mode, limits=spec.search.constraints.limits(),
        cache_dir=cache_dir, cache_max_gb=spec.data.cache_max_gb, train_storage=under(results, TRAIN_RUNS),
        footprint_dir="" if remote.is_uri(results) else under(results, FOOTPRINTS_DIR),
        keep_checkpoints=spec.checkpoint.keep, max_failures=spec.search.max_failures,
        resources=spec.resources)


def warm_cache(spec, context: TrialContext) -> None:
    """Decode the train and val images once per image size the space can pick, before any trial.

    Trials then only map the cache; an image size from an int range is decoded by the first
    trial that draws it (the others wait for it)."""
    knob = spec.knobs.get("image_size")
    if knob is not None and knob.kind not in ("const", "choice"):
        return
    sizes = knob.values() if knob is not None else [TrialParams().image_size]
    for split_name in ("train", "val"):
        items = dataset.read_split(context.split_file, (split_name,))
        for size in sorted(set(sizes)):
            dataset.load_images(context.data_root, items, list(context.class_names), int(size), context.cache_dir,
                             stream=sys.stdout, cache_max_gb=context.cache_max_gb)
