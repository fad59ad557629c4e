"""The Optuna study is written while the search runs (another process sees a RUNNING trial with
its epochs), and a second search can start from a first one's trials (--warm-start)."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest
from optuna.trial import TrialState

from search import study as study_mod
from tests.conftest import ROOT, kill_group, search_cli

SMOKE = str(ROOT / "spaces" / "smoke.yaml")


def _running_with_epochs(exp) -> list:
    try:
        study = study_mod.load(exp, "live")
    except Exception:  # no study yet
        return []
    return [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING and t.intermediate_values]


@pytest.fixture(scope="module")
def live_search(tmp_path_factory):
    """Runs the smoke space's two fixed trials (lr 0.003 and 1e-6), 8 epochs each, while this
    process polls the study; returns (results folder, the RUNNING trials seen with an epoch)."""
    tmp = tmp_path_factory.mktemp("live")
    exp = tmp / "res" / "live"
    cmd = [sys.executable, "-m", "search.run", SMOKE, "--storage", str(tmp / "res"), "--name", "live",
           "--set", "search.num_samples=2", "--set", "space.epochs=8", "--set", "search.scheduler.max_t=8",
           "--set", "search.scheduler.grace_period=8", "--set", "data.limit_per_class=100"]
    log = open(tmp / "search.log", "w")
    search = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        seen, deadline = [], time.time() + 400
        while not seen and time.time() < deadline and search.poll() is None:
            seen = _running_with_epochs(exp)
            time.sleep(0.2)
        search.wait(timeout=400)
    finally:
        kill_group(search.pid)
        search.wait(timeout=30)
    assert search.returncode == 0, (tmp / "search.log").read_text()
    return exp, seen


@pytest.mark.timeout(600)
def test_another_process_sees_a_running_trial_and_its_epochs(live_search):
    exp, seen = live_search
    assert seen, "no RUNNING trial with an epoch reported was seen while the search ran"
    assert seen[0].user_attrs["trial_id"] and min(seen[0].intermediate_values) == 1
    done = study_mod.load(exp, "live").trials  # afterwards, as optuna.load_study reads it
    assert [t.state for t in done] == [TrialState.COMPLETE] * 2
    assert all(sorted(t.intermediate_values) == list(range(1, 9)) for t in done)


@pytest.mark.timeout(600)
def test_warm_start_seeds_the_sampler_with_an_earlier_searchs_trials(live_search, tmp_path):
    first, _ = live_search
    narrower = "space.lr={float: [0.0001, 0.01], log: true}"  # the first search's 1e-6 trial is out of range
    second = search_cli([SMOKE, "--storage", str(tmp_path), "--name", "second", "--warm-start", str(first),
                         "--set", narrower, "--set", "search.num_samples=1", "--set", "search.points_to_evaluate=[]"],
                        timeout=400)
    assert second.returncode == 0, second.stderr
    assert (f"warm start: 1 finished trials of {first} seed the sampler; knobs left out (not in this space, or out "
            "of its range): lr") in second.stdout
    study = study_mod.load(tmp_path / "second", "second")
    [seeded] = [t for t in study.trials if "warm_start_from" in t.user_attrs]
    assert seeded.params == {"lr": 0.003} and seeded.state == TrialState.COMPLETE and len(study.trials) == 2
    assert sorted(seeded.intermediate_values) == list(range(1, 9))
    assert all(1e-4 <= t.params["lr"] <= 1e-2 for t in study.trials)
    # its one trial re-ran the first search's best configuration, which fits the new range
    assert "warm start: its best configuration runs again first: lr=0.003" in second.stdout
    [own] = [t for t in study.trials if "warm_start_from" not in t.user_attrs]
    assert own.params == {"lr": 0.003} and "warm_start_rerun" in own.user_attrs


@pytest.mark.timeout(120)
def test_warm_start_from_a_folder_without_a_study_is_one_line(tmp_path):
    r = search_cli([SMOKE, "--storage", str(tmp_path), "--warm-start", str(tmp_path / "nothing")], timeout=100)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"error: --warm-start: {tmp_path / 'nothing'}: not a results folder (no search.json); give the folder "
        "`python -m search.run` printed at the end, e.g. results/finetune"]


@pytest.mark.timeout(120)
def test_warm_start_from_a_search_with_another_objective_is_one_line(live_search, tmp_path):
    first, _ = live_search
    r = search_cli([SMOKE, "--storage", str(tmp_path), "--warm-start", str(first), "--set", "search.metric=val_loss",
                    "--set", "search.mode=min"], timeout=100)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"error: --warm-start {first}: that search optimised val_acc (max), this one val_loss (min); its scores "
        "would mislead the sampler"]


@pytest.mark.timeout(120)
def test_study_storage_that_cannot_open_or_already_holds_the_study_is_one_line(tmp_path):
    import optuna

    bad = search_cli([SMOKE, "--storage", str(tmp_path), "--study-storage", "not-a-url"], timeout=100)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "error: --study-storage: cannot open it (ArgumentError: Could not parse SQLAlchemy URL from given URL string)"]
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    optuna.create_study(study_name="smoke", storage=url)
    taken = search_cli([SMOKE, "--storage", str(tmp_path), "--study-storage", url], timeout=100)
    assert taken.returncode == 2
    assert taken.stderr.strip().splitlines() == [
        f"error: --study-storage {url}: a study named 'smoke' is already there; pick another --name"]
