"""Deployment-aware search: constraints that leave a configuration untrained and reach Optuna,
several objectives and their Pareto front, and a final model within the limits.

One real search (a real local Ray cluster, Optuna, the embedded images) of small CNNs whose
width decides their parameter count: objectives [val_acc, params_m], `max_params_m` between
the narrow and the wide ones, so that the wide ones are rejected before training. Parameter
counts, not latency, so that which trial is feasible does not depend on a noisy machine.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math

import optuna
import pytest

from analysis import rank, retrain
from analysis import report as analysis_report
from search import results_folder, run, space
from search import study as study_mod
from tests.conftest import ROOT, search_cli, write_space
from tests.test_train_loop import config_for
from trainables.models import limits
from trainables.trial import checkpoint, sessions, train_loop

MAX_PARAMS_M = 0.05  # a 3-block cnn: width 4 and 8 are under it (0.002 M, 0.006 M), width 64 over (0.37 M)

SPACE = f"""
name: deploy-test
data: {{source: animal-mnist, limit_per_class: 12}}
search:
  metric: [val_acc, params_m]
  constraints: {{max_params_m: {MAX_PARAMS_M}}}
  num_samples: 8
  max_concurrent_trials: 2
  startup_trials: 3
  scheduler: {{max_t: 2, grace_period: 1, reduction_factor: 2}}
  points_to_evaluate:
    - {{cnn_width: 64}}
    - {{cnn_width: 4}}
    - {{cnn_width: 8}}
space:
  model: cnn
  cnn_width: {{choice: [4, 8, 64]}}
  lr: {{float: [3.0e-3, 3.0e-2], log: true}}
  batch_size: 16
  image_size: 16
  epochs: 2
"""


@pytest.fixture(scope="module")
def searched(ray_cluster, tmp_path_factory, animal_root):
    """(results folder, what the search printed)."""
    tmp = tmp_path_factory.mktemp("deploy")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert run.main([str(write_space(tmp / "deploy.yaml", SPACE)), "--storage", str(tmp / "results")]) == 0
    return tmp / "results" / "deploy-test", out.getvalue()


def rank_front(results_dir) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert rank.main([str(results_dir)]) == 0
    return out.getvalue().split("Pareto front (analysis.retrain --pick N):")[1]


def _study(results_dir):
    return study_mod.load(results_dir, results_folder.read_record(results_dir).name)


@pytest.mark.timeout(600)
def test_a_configuration_over_a_limit_is_not_trained_and_is_infeasible_in_the_study(searched):
    results_dir, printed = searched
    table = results_folder.trials_table(results_dir)
    over = table[table["params_m"] > MAX_PARAMS_M]
    assert len(over) >= 1 and (over["status"] == "rejected").all() and (over["epochs_run"] == 0).all()
    assert not over["feasible"].any() and over["infeasible"].str.startswith("params_m").all()
    assert f"{len(over)} configuration(s) over search.constraints were not trained" in printed
    under = table[table["params_m"] <= MAX_PARAMS_M]
    assert len(under) >= 2 and under["feasible"].all() and (under["epochs_run"] >= 1).all()
    study = _study(results_dir)
    by_id = {t.user_attrs["trial_id"]: t for t in study.trials}
    for _, row in table.iterrows():
        t = by_id[row["trial_id"]]
        assert (t.constraints["params_m"] > 0) == (row["params_m"] > MAX_PARAMS_M)
        assert t.constraints["params_m"] == pytest.approx(row["params_m"] / MAX_PARAMS_M - 1)  # relative
        if row["status"] == "rejected":
            assert t.state == optuna.trial.TrialState.PRUNED and not t.intermediate_values


@pytest.mark.timeout(600)
def test_the_study_has_two_objectives_and_the_front_is_its_own(searched):
    results_dir, _ = searched
    study = _study(results_dir)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    table = results_folder.trials_table(results_dir)
    completed = {t.user_attrs["trial_id"]: t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE}
    for trial_id, t in completed.items():  # its best val_acc and its model's size
        row = table.set_index("trial_id").loc[trial_id]
        assert t.values == pytest.approx([row["best_val_acc"], row["params_m"]])
    front = results_folder.front(table, results_folder.read_record(results_dir))
    optuna_front = {t.user_attrs["trial_id"] for t in study.best_trials}
    assert optuna_front and set(front["trial_id"]) == optuna_front  # the same front as Optuna's own (all feasible here)
    assert list(front["best_val_acc"]) == sorted(front["best_val_acc"], reverse=True)
    assert set(table.loc[table["pareto"], "trial_id"]) == optuna_front


@pytest.mark.timeout(600)
def test_rank_marks_feasibility_and_the_front(searched, capsys):
    results_dir, _ = searched
    assert rank.main([str(results_dir)]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("trial_id"))
    assert "feasible" in header and "pareto" in header and "params_m" in header
    rows = [line.split() for line in out.splitlines() if line.split()[1:2] == ["rejected"]]
    assert rows and all("NO" in r for r in rows)
    board = results_folder.leaderboard(results_folder.trials_table(results_dir),
                                       results_folder.read_record(results_dir))
    feasible = list(board["feasible"])
    assert feasible == sorted(feasible, reverse=True)  # every feasible trial before every infeasible one


@pytest.mark.timeout(900)
def test_retrain_takes_a_feasible_point_of_the_front_and_measures_the_export(searched, tmp_path, capsys):
    results_dir, _ = searched
    front = results_folder.front(results_folder.trials_table(results_dir), results_folder.read_record(results_dir))
    n = len(front)
    assert retrain.main([str(results_dir), "--pick", str(n), "--out", str(tmp_path / "final")]) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "final" / retrain.TEST_FILE).read_text())
    assert report["trial_id"] == front.iloc[n - 1]["trial_id"]
    assert report["final_policy"] == "checkpoint"  # the model the search measured, not an ensemble of five
    assert report["final_params_m"] == pytest.approx(front.iloc[n - 1]["params_m"])
    assert report["final_params_m"] <= MAX_PARAMS_M and not report["final_over_limits"]
    assert report["exported_latency_ms"] > 0 and report["final_latency_ms"] > 0
    assert "ms eager" in out and "ms exported" in out and "limit params_m <= 0.05" in out
    model, _ = checkpoint.load(tmp_path / "final" / "model")
    assert sum(p.numel() for p in model.parameters()) / 1e6 <= MAX_PARAMS_M
    rows = [line.split()[:2] for line in rank_front(results_dir).splitlines() if line.strip()[:1].isdigit()]
    assert rows == [[str(i + 1), t] for i, t in enumerate(front["trial_id"])]  # rank numbers it as --pick takes it
    assert retrain.main([str(results_dir), "--pick", str(n + 1), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert f"--pick {n + 1}: the Pareto front" in err and f"has {n} point(s)" in err and "\n" not in err.strip()


@pytest.mark.timeout(600)
def test_the_report_has_the_deployment_section(searched):
    import matplotlib

    matplotlib.use("Agg")
    results_dir, _ = searched
    page = analysis_report.build(results_dir).read_text()
    assert "id='deployment'" in page
    assert "params_m &lt;= 0.05" in page or "params_m <= 0.05" in page
    section = page[page.index("id='deployment'"):page.index("</section>", page.index("id='deployment'"))]
    assert "<img" in section and "<table" in section and "--pick N" in section


@pytest.mark.timeout(300)
def test_fit_over_a_parameter_limit_reports_once_and_trains_nothing(folder, tmp_path):
    config, context = config_for(folder, tmp_path, cnn_width=64, epochs=3)
    session = sessions.LocalSession(checkpoint_dir=tmp_path / "ck")
    row = train_loop.fit(config, dataclasses.replace(context, limits={"params_m": 0.01}), session)
    assert session.history == [row] and row["epoch"] == 0 and math.isnan(row[context.metric])
    assert row["infeasible"].startswith("params_m ") and row["params_m"] > 0.01
    assert "train_loss" not in row and not (tmp_path / "ck" / checkpoint.WEIGHTS).exists()
    session = sessions.LocalSession()
    train_loop.fit(config, dataclasses.replace(context, limits={"params_m": 10.0}), session)
    assert [r["epoch"] for r in session.history] == [1, 2, 3] and "infeasible" not in session.history[-1]


def test_limits_judge_only_what_was_measured():
    assert limits.over_limits({"latency_ms": 6.0, "params_m": 1.0}, {"latency_ms": 5.0, "params_m": 2.0}) == \
        {"latency_ms": 1.0}
    assert limits.describe_over({"latency_ms": 6.0}, {"latency_ms": 5.0}) == "latency_ms 6 > 5"
    assert limits.within({"latency_ms": 4.0}, {"latency_ms": 5.0})
    assert not limits.within({"latency_ms": float("nan")}, {"latency_ms": 5.0})  # never measured: not known good
    assert limits.over_limits({}, {"gpu_latency_ms": 1.0}) == {}


def _error_of(tmp_path, search_section: str) -> str:
    with pytest.raises(space.SpaceError) as e:
        space.load(write_space(tmp_path / "s.yaml", f"search: {search_section}\nspace: {{lr: 0.01}}\n"))
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "s.yaml") in msg
    return msg


@pytest.mark.parametrize("section,expected", [
    ("{constraints: {max_latency: 20}}", ["search.constraints.max_latency", "did you mean 'max_latency_ms'",
                                          "max_params_m", "max_model_mb"]),
    ("{constraints: {max_params_m: 0}}", ["search.constraints.max_params_m", "greater than 0"]),
    ("{metric: [latency_ms, val_acc]}", ["first objective", "validation metric", "got 'latency_ms'"]),
    ("{metric: [val_acc, val_loss]}", ["after the first are costs", "got 'val_loss'"]),
    ("{metric: [val_acc, latency_ms, latency_ms]}", ["twice"]),
    ("{metric: [val_acc, latency_ms], mode: [max, max]}", ["latency_ms is optimised with mode 'min'"]),
    ("{metric: [val_acc, latency_ms], mode: [max]}", ["1 directions for 2 objectives"]),
    ("{metric: [val_acc, fps]}", ["search.metric", "latency_ms"]),
    ("{metric: []}", ["search.metric", "an empty list"]),
])
@pytest.mark.timeout(60)
def test_a_bad_constraint_or_objective_is_one_line(tmp_path, section, expected):
    msg = _error_of(tmp_path, section)
    for part in expected:
        assert part in msg, msg


@pytest.mark.timeout(120)
def test_the_cli_says_a_bad_constraint_in_one_line_before_ray_starts(tmp_path):
    path = write_space(tmp_path / "s.yaml", "search: {constraints: {max_latncy_ms: 5}}\nspace: {lr: 0.01}\n")
    proc = search_cli([str(path), "--storage", str(tmp_path / "r")], timeout=100)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "did you mean 'max_latency_ms'" in proc.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.timeout(60)
def test_the_shipped_deploy_space_is_valid():
    spec = space.load(ROOT / "spaces" / "deploy.yaml")
    assert spec.search.constraints.limits() == {"latency_ms": 5.0}
    front = space.load(ROOT / "spaces" / "deploy.yaml",
                       ["search.metric=[val_acc, latency_ms]", "search.constraints={}"])
    assert front.search.objectives == [("val_acc", "max"), ("latency_ms", "min")]
    assert front.search.asha_metric == "val_acc" and not front.search.constraints.limits()


@pytest.mark.timeout(60)
def test_a_warm_start_judges_the_earlier_trials_against_the_new_limits():
    """The earlier search's figures, not its constraints: its limits may have been other ones."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = {"cnn_width": optuna.distributions.CategoricalDistribution([8, 64])}
    earlier = optuna.create_study(directions=["maximize", "minimize"])
    for width, acc, params_m in ((8, 0.7, 0.006), (64, 0.8, 0.37)):
        t = optuna.trial.create_trial(params={"cnn_width": width}, distributions=dists, values=[acc, params_m],
                                      user_attrs={"params_m": params_m})
        earlier.add_trial(t)
    study = optuna.create_study(directions=["maximize", "minimize"])
    added, dropped = study_mod.warm_start(study, earlier, dists, {"params_m": 0.05})
    assert (added, dropped) == (2, [])
    by_width = {t.params["cnn_width"]: t for t in study.trials}
    assert by_width[8].constraints["params_m"] < 0 < by_width[64].constraints["params_m"]
    assert by_width[64].values == pytest.approx([0.8, 0.37])
    assert study_mod.rerun_best(study, earlier, dists) is None  # a front has no one best to re-run


@pytest.mark.timeout(60)
def test_a_warm_start_leaves_out_untrained_trials_that_the_new_limits_allow():
    """A configuration the earlier limits kept from training has no score: within the new limits
    nothing is known of it; still over them, it is known to be infeasible."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = {"cnn_width": optuna.distributions.CategoricalDistribution([8, 64, 128])}
    earlier = optuna.create_study(direction="maximize")
    for width, params_m in ((64, 0.37), (128, 1.5)):
        earlier.add_trial(optuna.trial.create_trial(
            params={"cnn_width": width}, distributions=dists, state=optuna.trial.TrialState.PRUNED,
            user_attrs={"params_m": params_m, "infeasible": f"params_m {params_m} > 0.05"}))
    study = optuna.create_study(direction="maximize")
    assert study_mod.warm_start(study, earlier, dists, {"params_m": 1.0}) == (1, [])
    assert [t.params["cnn_width"] for t in study.trials] == [128] and study.trials[0].constraints["params_m"] > 0
