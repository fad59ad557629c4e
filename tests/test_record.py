"""search.json: the `SearchRecord` the search writes and everything after it reads, round-tripped;
and the one policy for a results folder of another layout: refused whole, in one line, exit 2."""
from __future__ import annotations

import dataclasses
import json

import pytest

from analysis import rank, report, retrain
from search import inputs, results_folder, run
from search import space as space_mod
from search.record import SCHEMA_VERSION, AshaSettings, Objective, SearchRecord
from tests.conftest import ROOT, write_space
from trainables.context import Resources
from trainables.data import dataset

SMOKE = str(ROOT / "spaces" / "smoke.yaml")
# what an hpo-finetune before schema_version wrote as search.json
OLD_SEARCH_JSON = {"name": "old", "metric": "val_acc", "mode": "max", "objectives": [["val_acc", "max"]],
                   "limits": {}, "knobs": ["lr"], "data_root": "/data", "split_file": "/r/split.csv",
                   "class_names": ["a", "b"], "results": "/r", "max_epochs": 3, "num_samples": 3, "time_s": None,
                   "study_storage": "/r/optuna.journal", "distributions": {},
                   "scheduler": {"max_t": 3, "grace_period": 1, "reduction_factor": 2}, "gpus_per_trial": 0}


def _record() -> SearchRecord:
    """A record with every field away from its plainest value: two objectives, limits, a budget."""
    from optuna.distributions import FloatDistribution, distribution_to_json

    lr = json.loads(distribution_to_json(FloatDistribution(1e-5, 1e-1, log=True)))
    return SearchRecord(
        name="deploy", objectives=(Objective("val_acc", "max"), Objective("latency_ms", "min")),
        limits={"params_m": 2.5}, knobs=("lr", "model"), distributions={"lr": lr},
        scheduler=AshaSettings(max_t=9, grace_period=1, reduction_factor=3),
        resources=Resources(workers_per_trial=2, cpus_per_worker=1.5, gpus_per_worker=0.25),
        max_epochs=9, num_samples=None, time_s=300.0, study_storage="/r/optuna.journal", data_root="s3://b/images",
        split_file="s3://b/r/split.csv", class_names=("cat", "dog"), results="s3://b/r")


@pytest.mark.timeout(60)
def test_the_record_round_trips_through_search_json_and_names_its_columns(tmp_path):
    record = _record()
    path = results_folder.write_record(tmp_path, record)
    assert results_folder.read_record(tmp_path) == record
    on_disk = json.loads(path.read_text())
    assert next(iter(on_disk)) == "schema_version" and on_disk["schema_version"] == SCHEMA_VERSION
    # readable, and close to what search.json always held
    assert on_disk["objectives"] == [["val_acc", "max"], ["latency_ms", "min"]]
    assert on_disk["scheduler"] == {"max_t": 9, "grace_period": 1, "reduction_factor": 3}
    assert on_disk["resources"]["gpus_per_worker"] == 0.25 and on_disk["time_s"] == 300.0
    # the derived names: the record builds them, nothing else does
    assert (record.metric, record.mode, record.maximize) == ("val_acc", "max", True)
    assert record.best_column == "best_val_acc" and record.search_best_key == "search_best_val_acc"
    assert record.objective_columns == [("best_val_acc", "max"), ("latency_ms", "min")]
    assert record.against("params_m").objective_columns == [("best_val_acc", "max"), ("params_m", "min")]
    assert record.gpus_per_trial == 0.5 and record.scheduler.rungs == [1, 3]
    assert record.searched()["lr"].log and record.searched()["lr"].high == 0.1


@pytest.mark.timeout(120)
def test_write_inputs_writes_the_record_and_context_the_readers_take(folder, tmp_path):
    spec = space_mod.load(write_space(tmp_path / "s.yaml", "search: {num_samples: 2, metric: [val_acc, params_m]}\n"
                                      "resources: {cpus_per_worker: 2}\n"
                                      "space: {model: cnn, lr: {float: [1.0e-4, 1.0e-1], log: true}, epochs: 2}\n"))
    index = dataset.prepare(str(folder), {"train": 0.7, "val": 0.15, "test": 0.15}, 0)
    exp = tmp_path / "res"
    record, context = inputs.write_inputs(exp, spec, index, "t")
    assert results_folder.read_record(exp) == record and results_folder.read_context(exp) == context
    assert record.objective_pairs == spec.search.objectives == [("val_acc", "max"), ("params_m", "min")]
    assert record.knobs == ("lr",) and set(record.searched()) == {"lr"}
    assert record.resources == spec.resources == context.resources  # one Resources type, end to end
    assert record.split_file == context.split_file == str(exp / "split.csv") and record.num_samples == 2


def _refused(folder) -> str:
    return (f"error: {folder} was written by an older hpo-finetune (no schema_version in search.json); "
            "run the search again, into a new folder")


@pytest.mark.timeout(120)
def test_a_folder_without_a_known_schema_version_is_refused_in_one_line(tmp_path, capsys):
    old = tmp_path / "old"
    old.mkdir()
    (old / "search.json").write_text(json.dumps(OLD_SEARCH_JSON))
    for command in (rank.main, report.main, lambda argv: retrain.main(argv + ["--out", str(tmp_path / "final")])):
        assert command([str(old)]) == 2
        assert capsys.readouterr().err.strip().splitlines() == [_refused(old)]
    newer = tmp_path / "newer"
    newer.mkdir()
    results_folder.write_record(newer, _record())
    body = json.loads((newer / "search.json").read_text())
    (newer / "search.json").write_text(json.dumps({**body, "schema_version": SCHEMA_VERSION + 1}))
    assert rank.main([str(newer)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {newer} was written by another hpo-finetune (schema_version {SCHEMA_VERSION + 1} in search.json; "
        f"this one reads {SCHEMA_VERSION}); run the search again, into a new folder"]
    (newer / "search.json").write_text(json.dumps({**body, "knobs_renamed": body.pop("knobs")}))
    assert rank.main([str(newer)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: {newer / 'search.json'}: damaged (not a search record") and "new folder" in line


@pytest.mark.timeout(120)
def test_a_warm_start_from_an_older_folder_is_refused_before_ray(folder, tmp_path, capsys):
    old = tmp_path / "old"
    old.mkdir()
    (old / "search.json").write_text(json.dumps(OLD_SEARCH_JSON))
    assert run.main([SMOKE, "--data", str(folder), "--storage", str(tmp_path / "res"), "--warm-start", str(old)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [_refused(old).replace("error: ", "error: --warm-start: ")]


@pytest.mark.timeout(60)
def test_resources_is_one_type_the_space_validates_into():
    spec = space_mod.SpaceFile.model_validate({"resources": {"workers_per_trial": 2, "gpus_per_worker": 0.5}})
    assert type(spec.resources) is Resources and spec.resources.ray_train
    assert spec.resources.per_worker == {"CPU": 1, "GPU": 0.5}
    assert dataclasses.replace(spec.resources, workers_per_trial=1) == Resources(gpus_per_worker=0.5)
