"""The time budget: `--time` / `search.time`, how trials start and stop against it, and what is said."""
from __future__ import annotations

import json
import subprocess
import time

import pytest

from search.duration import parse_duration, say
from tests.conftest import ROOT, search_cli

SMOKE = str(ROOT / "spaces" / "smoke.yaml")


@pytest.mark.parametrize("text,seconds", [("10m", 600), ("90s", 90), ("1h30m", 5400), ("2.5m", 150), ("45", 45),
                                          (120, 120), ("1h 5m", 3900), ("1H", 3600)])
def test_durations_as_users_write_them(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["10 minutes", "m", "", "5x", "-3m", "0", True, "1h30"])
def test_a_duration_that_is_not_one_is_refused(text):
    with pytest.raises(ValueError, match="duration|more than 0"):
        parse_duration(text)


def test_durations_as_progress_lines_say_them():
    assert [say(s) for s in (0, 45, 61, 754, 3900, -5)] == ["0s", "45s", "1m01s", "12m34s", "1h05m", "0s"]


def _epoch_seconds(exp_dir) -> list[float]:
    """Every report's epoch duration, over every trial (the first includes the trial's start)."""
    out = []
    for result in exp_dir.glob("trial_*/result.json"):
        out += [json.loads(ln)["time_this_iter_s"] for ln in result.read_text().splitlines() if ln.strip()]
    return out


@pytest.mark.timeout(420)
def test_a_search_spends_its_budget_and_overruns_it_by_at_most_one_epoch(tmp_path):
    """Long trials (20 epochs) against a 45 s budget: the search keeps starting trials while they
    can reach their first rung, stops each at its first report after the deadline, and the whole
    command ends within the budget plus the slowest epoch."""
    budget = 45
    cmd = [SMOKE, "--storage", str(tmp_path), "--name", "b", "--time", f"{budget}s",
           "--set", "search.num_samples=auto", "--set", "search.max_concurrent_trials=2",
           "--set", "space.epochs=20", "--set", "search.scheduler.max_t=20",
           "--set", "search.scheduler.grace_period=2", "--set", "search.points_to_evaluate=[]"]
    started = time.time()
    r = search_cli(cmd, timeout=300)
    wall = time.time() - started
    assert r.returncode == 0, r.stderr[-3000:]
    exp = tmp_path / "b"
    epochs = _epoch_seconds(exp)
    assert wall <= budget + max(epochs), (wall, max(epochs), r.stdout[-3000:])
    assert "as many trials as fit in 45s" in r.stdout
    assert "left, best " in r.stdout  # the progress lines say the time left and the best so far
    last_reports = [json.loads(result.read_text().splitlines()[-1]) for result in exp.glob("trial_*/result.json")]
    if any(rep["timestamp"] > started + budget + 1 for rep in last_reports):  # a trial ran past the deadline
        assert "stopped by the time budget" in r.stdout  # (else ASHA ended the last ones before it: no such line)
    assert json.loads((exp / "budget.json").read_text())["refused"] is True  # no trial started after it
    assert "search finished" in r.stdout and "idle" in r.stdout and "epochs trained" in r.stdout
    trials = list(exp.glob("trial_*/result.json"))
    assert len(trials) >= 2, r.stdout  # it went on starting trials while the budget allowed
    for result in trials:  # no trial was started only to be thrown away: each reached a report
        assert result.read_text().strip(), result
    assert json.loads((exp / "budget.json").read_text())["ended"] is True
    again = search_cli(cmd, timeout=120)  # a search whose budget is spent is finished, not resumable
    assert again.returncode == 2 and "pick another --name" in again.stderr, again.stderr


@pytest.mark.timeout(60)
def test_num_samples_auto_without_a_budget_is_the_old_default(tmp_path):
    from search import space as space_mod

    p = tmp_path / "s.yaml"
    p.write_text("search: {num_samples: auto}\nspace: {model: cnn}\n")
    assert space_mod.load(p).search.max_trials == space_mod.DEFAULT_TRIALS
    p.write_text("search: {time: 2m, num_samples: 5}\nspace: {model: cnn}\n")
    s = space_mod.load(p).search
    assert (s.time, s.max_trials) == (120, 5)  # num_samples, when set, is an upper bound
    p.write_text("search: {time_budget_s: 840}\nspace: {model: cnn}\n")  # the earlier name still reads
    assert space_mod.load(p).search.time == 840
    p.write_text("search: {time: 5m, time_budget_s: null}\nspace: {model: cnn}\n")  # null: no budget, as it said
    assert space_mod.load(p).search.time is None


def test_a_bad_time_flag_is_one_line_before_ray_starts(tmp_path):
    r = search_cli([SMOKE, "--storage", str(tmp_path), "--time", "ten minutes"], timeout=120)
    assert r.returncode == 2
    assert r.stderr == ("error: --time: expected a duration such as 10m, 90s, 1h30m or a number of seconds "
                        "(got 'ten minutes')\n")


def test_no_results_folder_is_committed():
    """A search's results (a search.json) belong in results/, never in git: outside tests/ none is tracked."""
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    tracked = [p for p in listed.stdout.splitlines() if p.endswith("search.json") and not p.startswith("tests/")]
    assert tracked == []


@pytest.mark.timeout(600)
def test_a_killed_budgeted_search_resumes_with_what_its_budget_has_left(tmp_path):
    """SIGKILL the driver once a trial finished; --resume gets the budget minus what was spent
    (recorded every 5 s, so at most 5 s more), says so, and ends the search on its budget."""
    import sys

    from search import tune_files
    from tests.conftest import kill_group

    budget = 90
    storage, name = tmp_path / "res", "kb"
    exp = storage / name
    args = [SMOKE, "--storage", str(storage), "--name", name, "--time", f"{budget}s",
            "--set", "search.num_samples=auto", "--set", "search.max_concurrent_trials=2",
            "--set", "space.epochs=20", "--set", "search.scheduler.max_t=20", "--set", "search.points_to_evaluate=[]"]
    log = open(tmp_path / "search.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "search.run", *args], cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)

    def finished_one() -> bool:
        try:
            return any(t.status == "TERMINATED" for t in tune_files.read_trials(exp))
        except Exception:  # no snapshot yet, or one being written
            return False

    try:  # the budget holds the search open for 90 s; a 20-epoch trial of this tiny CNN takes seconds
        while proc.poll() is None and not (finished_one() and (exp / "budget.json").is_file()):
            time.sleep(0.2)
        assert proc.poll() is None, "the search ended before it could be killed:\n" + open(log.name).read()
    finally:
        kill_group(proc.pid, wait_s=30)
        proc.wait(timeout=60)
    spent = json.loads((exp / "budget.json").read_text())["spent_s"]
    assert 0 < spent < budget

    started = time.time()
    i = args.index("--time")  # resumed as the printed --resume command says: with the budget left
    resumed = search_cli(args[:i] + args[i + 2:] + ["--resume"], timeout=300)
    wall = time.time() - started
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    left = budget - spent
    assert f"time budget: {say(left)} left of 1m30s" in resumed.stdout, resumed.stdout[:3000]
    assert wall <= left + 5 + max(_epoch_seconds(exp)), (wall, left, resumed.stdout[-2000:])
    assert json.loads((exp / "budget.json").read_text())["ended"] is True
    assert "search finished" in resumed.stdout
