"""The Ray internals `ray_internals` relies on, against the installed Ray and Optuna: an upgrade
that removes or changes one fails here. (The controller skipping `on_trial_result` for a trial's
last result is checked end to end: tests/test_end_to_end.py wants every epoch in the study.)"""
from __future__ import annotations

import pytest
from optuna.trial import TrialState

from search import study as study_mod
from search.optuna_space import YamlSpace
from search.searcher import EpochOptunaSearch
from trainables import ray_internals
from trainables.ray_internals import study_of


@pytest.mark.timeout(120)
def test_every_hook_the_project_relies_on_is_in_the_installed_ray():
    assert ray_internals.missing_hooks() == []


@pytest.mark.timeout(120)
def test_a_removed_hook_is_reported_by_name(monkeypatch):
    """What an upgrade that drops a hook looks like: each one removed here is named."""
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.experiment import Trial
    from ray.tune.integration.ray_train import TuneReportCallback
    from ray.tune.search.optuna import OptunaSearch

    monkeypatch.delattr(DataParallelTrainer, "_create_default_callbacks")
    monkeypatch.delattr(Trial, "error_file")

    def stop_that_marks_first(self, trial, exception=None):  # a Ray that fixed what the patch is for
        self._mark_trial_to_checkpoint(trial)
        if trial not in self._trial_to_actor:
            return

    monkeypatch.setattr(TuneController, "_schedule_trial_stop", stop_that_marks_first)

    def init_without_the_queue(self):
        self.queue = None

    monkeypatch.setattr(TuneReportCallback, "__init__", init_without_the_queue)
    real_init = OptunaSearch.__init__

    def init_then_rename(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        self._completed = self.__dict__.pop("_completed_trials")

    monkeypatch.setattr(OptunaSearch, "__init__", init_then_rename)
    assert ray_internals.missing_hooks() == [
        "DataParallelTrainer._create_default_callbacks adds a DatasetsCallback",
        "TuneReportCallback._training_actor_item_queue",
        "OptunaSearch._ot_trials, _ot_study, _completed_trials",
        "Trial.local_path, .storage (storage_filesystem, trial_fs_path), .error_file",
        "TuneController._schedule_trial_stop returns before marking a trial with no actor",
    ]


def _dies_once_its_report_is_saved():
    """A Tune trial function that reports once, waits until Tune's saved experiment state (in the
    results folder) holds that report, then kills its own process, as the out-of-memory killer
    would. (Made here, so that Ray ships it by value: trial processes cannot import this module.)"""

    def trial(config):
        import os
        import signal
        import time
        import uuid
        from pathlib import Path

        from ray import tune

        token = uuid.uuid4().hex
        tune.report({"token": token})
        deadline = time.time() + 120  # Tune saves its state every 10 s or so; the test's timeout is the guard
        while time.time() < deadline and not any(token in p.read_text()
                                                 for p in Path(config["exp"]).glob(config["glob"])):
            time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGKILL)

    return trial


@pytest.mark.timeout(240)
def test_a_trial_whose_process_died_on_its_last_failure_is_saved_as_an_error(ray_cluster, tmp_path):
    """Ray 2.60 saved such a trial as RUNNING whenever Tune had saved the state since its last
    report (ray_internals.save_stopped_trial_state says why); the trial above makes that the case
    every time. Its folder then reads ERROR, with its error file."""
    from ray import tune

    from search import results_folder, tune_files

    ray_internals.save_stopped_trial_state()  # what search.tuner does before building a Tuner
    tune.Tuner(_dies_once_its_report_is_saved(),
               param_space={"exp": str(tmp_path / "x"), "glob": ray_internals.STATE_GLOB},
               run_config=tune.RunConfig(name="x", storage_path=str(tmp_path), verbose=0)).fit()
    [trial] = tune_files.read_trials(tmp_path / "x")
    assert trial.status == "ERROR" and trial.error_file is not None
    status, reason = results_folder.classify_error_file(trial.error_file, {})
    assert status == "error" and reason.startswith("the trial's process died"), reason

KNOBS = {"lr": {"kind": "float", "low": 1e-4, "high": 1e-1, "log": True, "step": None, "when": {}},
         "epochs": {"kind": "const", "value": 3, "when": {}}}


def _searcher(tmp_path):
    return EpochOptunaSearch(YamlSpace(KNOBS), metric="val_acc", mode="max",
                             study_name="s", storage=study_mod.storage(tmp_path))


def _asked(tmp_path, trial_ids: str):
    """A searcher that has suggested a config for each of TRIAL_IDS (one letter each)."""
    s = _searcher(tmp_path)
    for t in trial_ids:
        s.suggest(t)
    return s


def _epoch(value, epoch, of=3):
    return {"val_acc": value, "epoch": epoch, "epoch_of": of}


@pytest.mark.timeout(60)
def test_optuna_search_keeps_the_private_state_the_subclass_uses(tmp_path):
    s = _searcher(tmp_path)
    assert s._ot_trials == {} and s._completed_trials == set() and study_of(s) is s._ot_study
    config = s.suggest("a")
    assert 1e-4 <= config["lr"] <= 1e-1 and config["epochs"] == 3 and set(config) == {"lr", "epochs"}
    assert "a" in s._ot_trials


@pytest.mark.timeout(60)
def test_stopped_trials_are_pruned_completed_ones_keep_their_best_and_errors_fail(tmp_path):
    s = _asked(tmp_path, "abc")
    s.on_trial_result("a", _epoch(0.5, 1))
    s.on_trial_complete("a", _epoch(0.4, 2))  # ASHA stopped it at epoch 2 of 3
    s.on_trial_result("b", _epoch(0.6, 1))
    s.on_trial_result("b", _epoch(0.8, 2))
    s.on_trial_result("b", _epoch(0.8, 2))  # a report redone after a restore: told once
    s.on_trial_complete("b", _epoch(0.7, 3))
    s.on_trial_complete("c", error=True)
    by_id = {t.user_attrs["trial_id"]: t for t in study_of(s).trials}
    assert by_id["a"].state == TrialState.PRUNED and by_id["a"].intermediate_values == {1: 0.5, 2: 0.4}
    assert by_id["a"].value == 0.4
    assert by_id["b"].state == TrialState.COMPLETE and by_id["b"].value == 0.8  # its best epoch, not its last
    assert by_id["b"].intermediate_values == {1: 0.6, 2: 0.8, 3: 0.7}
    assert by_id["c"].state == TrialState.FAIL


@pytest.mark.timeout(60)
def test_the_searcher_survives_tunes_save_and_restore_with_its_live_study(tmp_path):
    s = _searcher(tmp_path)
    s.suggest("a")
    s.on_trial_result("a", _epoch(0.5, 1))
    s.save(str(tmp_path / "searcher.pkl"))  # what Tune does at every experiment checkpoint
    (tmp_path / "elsewhere").mkdir()
    again = _searcher(tmp_path / "elsewhere")
    again.restore(str(tmp_path / "searcher.pkl"))
    again.on_trial_complete("a", _epoch(0.6, 3))
    [t] = study_mod.load(tmp_path, "s").trials  # the journal in the results folder
    assert t.state == TrialState.COMPLETE and t.intermediate_values == {1: 0.5, 3: 0.6}


@pytest.mark.timeout(60)
def test_a_trial_its_own_early_stop_ended_is_complete_not_pruned(tmp_path):
    s = _searcher(tmp_path)
    s.suggest("a")
    s.on_trial_complete("a", {**_epoch(0.7, 2, of=6), "early_stopped": True})
    [t] = study_of(s).trials
    assert t.state == TrialState.COMPLETE and t.value == 0.7


@pytest.mark.timeout(60)
def test_trials_left_running_are_closed_when_the_search_ends(tmp_path):
    """Tune tells the searcher nothing of trials its time budget stops."""
    s = _asked(tmp_path, "ab")
    s.on_trial_result("a", _epoch(0.5, 1))
    assert study_mod.close_unfinished(study_of(s)) == 2
    by_id = {t.user_attrs["trial_id"]: t for t in study_mod.load(tmp_path, "s").trials}
    assert by_id["a"].state == TrialState.PRUNED and by_id["b"].state == TrialState.FAIL


@pytest.mark.timeout(60)
def test_warm_start_keeps_only_values_the_new_space_can_sample(tmp_path):
    import optuna
    from optuna.distributions import FloatDistribution, IntDistribution

    old = optuna.create_study(direction="maximize")
    for lr, width in ((0.01, 16), (0.5, 24), (0.02, 20)):
        old.add_trial(optuna.trial.create_trial(
            params={"lr": lr, "cnn_width": width}, value=0.5,
            distributions={"lr": FloatDistribution(1e-3, 1.0, log=True), "cnn_width": IntDistribution(8, 32)}))
    new = optuna.create_study(direction="maximize")
    dists = {"lr": FloatDistribution(1e-3, 0.1, log=True), "cnn_width": IntDistribution(8, 32, step=8)}
    added, dropped = study_mod.warm_start(new, old, dists)
    assert added == 3 and dropped == ["cnn_width", "lr"]  # 0.5 is out of range; 20 is off the step
    assert [t.params for t in new.trials] == [{"lr": 0.01, "cnn_width": 16}, {"cnn_width": 24}, {"lr": 0.02}]


@pytest.mark.timeout(60)
def test_warm_start_asks_for_the_earlier_best_first_when_it_fits(tmp_path):
    import optuna
    from optuna.distributions import FloatDistribution

    old = optuna.create_study(direction="maximize")
    for lr, value in ((0.01, 0.5), (0.05, 0.9), (0.02, 0.7)):
        old.add_trial(optuna.trial.create_trial(params={"lr": lr}, value=value,
                                                distributions={"lr": FloatDistribution(1e-3, 1.0, log=True)}))
    new = _searcher(tmp_path)  # its space: lr in [1e-4, 0.1], log
    dists = {"lr": FloatDistribution(1e-4, 1e-1, log=True)}
    assert study_mod.rerun_best(study_of(new), old, dists) == {"lr": 0.05}
    config = new.suggest("a")
    assert config["lr"] == 0.05 and study_of(new).trials[-1].user_attrs["warm_start_rerun"].endswith("#1")
    assert new.suggest("b")["lr"] != 0.05  # then the sampler's own
    narrower = {"lr": FloatDistribution(1e-4, 1e-2, log=True)}  # the best is out of this range: nothing queued
    assert study_mod.rerun_best(optuna.create_study(direction="maximize"), old, narrower) is None


@pytest.mark.timeout(120)
def test_reading_results_does_not_import_ray_tune_or_optuna():
    """The searcher class is made on first use: a Train worker, or `analysis.rank` reading a
    folder, does not pay for importing Ray Tune and Optuna."""
    import subprocess
    import sys

    code = ("import sys, search.tune_files, trainables.trial.driver, trainables.ray_internals; "
            "print(sorted(m for m in ('ray.tune', 'optuna') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=100, check=True)
    assert out.stdout.strip() == "[]"
