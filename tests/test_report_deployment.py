"""The report's deployment section (accuracy against cost, the fronts, the constraints) on trials
tables built here, where the front is known by hand; and `results_folder.pareto_mask` itself."""
from __future__ import annotations

import dataclasses
import html
import json
import math

import matplotlib
import pandas as pd
import pytest

from analysis import report
from search import results_folder
from search.record import AshaSettings, Objective, SearchRecord
from trainables.context import Resources

matplotlib.use("Agg")

NAN = math.nan
KNOBS = ["model", "lr"]


def _table(rows: list[tuple]) -> pd.DataFrame:
    """A trials table as `results_folder.trials_table` writes it, from
    (trial_id, status, best_val_acc, latency_ms, params_m, model_mb, feasible, infeasible) rows."""
    cols = ["trial_id", "status", "best_val_acc", "latency_ms", "params_m", "model_mb", "feasible", "infeasible"]
    df = pd.DataFrame(rows, columns=cols)
    df["model"] = [f"m{i}" for i in range(len(df))]
    df["lr"] = [10.0 ** -(1 + i % 3) for i in range(len(df))]
    return df


# Limit latency_ms <= 20. Worked by hand, completed feasible trials (acc, latency): t2 (.85, 10), t3 (.80, 5),
# t4 (.80, 8: t3 as good and faster), t6 (.84, 12: t2 better and faster), t9 (.75, 3).
# Front, best first on val_acc: t2, t3, t9. Never on it: t0 (trained, over the limit), t1 (rejected),
# t5 (fastest, but ASHA stopped it: results_folder.front keeps completed trials), t7 (failed, no score),
# t8 (the best score, but latency not measured: infeasible).
CONSTRAINED = _table([
    ("t0", "completed", 0.93, 30.0, 9.0, 36.0, False, "latency_ms 30 > 20"),
    ("t1", "rejected", NAN, 50.0, 20.0, 80.0, False, "latency_ms 50 > 20"),
    ("t2", "completed", 0.85, 10.0, 4.0, 16.0, True, ""),
    ("t3", "completed", 0.80, 5.0, 2.0, 8.0, True, ""),
    ("t4", "completed", 0.80, 8.0, 3.0, 12.0, True, ""),
    ("t5", "stopped", 0.70, 2.0, 0.5, 2.0, True, ""),
    ("t6", "completed", 0.84, 12.0, 5.0, 20.0, True, ""),
    ("t7", "error", NAN, 3.0, 1.0, 4.0, True, ""),
    ("t8", "completed", 0.95, NAN, NAN, NAN, False, ""),
    ("t9", "completed", 0.75, 3.0, 1.5, 6.0, True, ""),
])


def _record(name: str, objectives: list[tuple[str, str]], limits: dict[str, float]) -> SearchRecord:
    """A search's record (its search.json) with these objectives and limits, searching KNOBS."""
    return SearchRecord(
        name=name, objectives=tuple(Objective(*o) for o in objectives), limits=limits, knobs=tuple(KNOBS),
        distributions={}, scheduler=AshaSettings(max_t=3, grace_period=1, reduction_factor=3), resources=Resources(),
        max_epochs=3, num_samples=10, time_s=None, study_storage="optuna.journal", data_root="images",
        split_file="split.csv", class_names=("a", "b"), results="results")


MULTI = _record("multi", [("val_acc", "max"), ("latency_ms", "min")], {"latency_ms": 20.0})
SINGLE = _record("single", [("val_acc", "max")], {})


def _unconstrained() -> pd.DataFrame:
    return CONSTRAINED.drop(columns=["feasible", "infeasible"])


def _render(table: pd.DataFrame, record: SearchRecord, results_dir) -> str:
    return report._deployment_section({"table": table, "record": record, "dir": results_dir})


@pytest.mark.timeout(60)
def test_pareto_mask_keeps_ties_drops_the_dominated_and_rows_missing_a_value():
    t = pd.DataFrame({"acc": [0.9, 0.9, 0.8, 0.95, 0.7, NAN, 0.99, 0.85, 0.9],
                      "lat": [10, 10, 10, 20, 1, 1, NAN, 12, 10],
                      "size": [5, 5, 5, 5, 9, 1, 1, 1, 6]},
                     index=list("abcdefghi"))
    mask = results_folder.pareto_mask(t, [("acc", "max"), ("lat", "min"), ("size", "min")])
    assert mask.dtype == bool and list(mask.index) == list("abcdefghi")
    # a, b: tied, neither beats the other; c: a is better on acc; d: best acc; e: fastest; f, g: a value
    # missing; h: smallest of the complete rows; i: a equal on acc and lat, smaller
    assert mask[mask].index.tolist() == ["a", "b", "d", "e", "h"]
    assert results_folder.pareto_mask(t, [("acc", "max")])[lambda m: m].index.tolist() == ["g"]
    assert results_folder.pareto_mask(t, [("lat", "min")])[lambda m: m].index.tolist() == ["e", "f"]
    # the sense of each column matters: the slowest, most accurate ones when latency is maximised
    assert results_folder.pareto_mask(t, [("acc", "max"), ("lat", "max")])[lambda m: m].index.tolist() == ["d"]
    assert not results_folder.pareto_mask(t, [("acc", "max"), ("absent", "min")]).any()


@pytest.mark.timeout(60)
def test_multi_objective_front_lists_exactly_the_feasible_non_dominated_trials_best_first():
    shown = report.deployment_front(CONSTRAINED, MULTI)
    assert shown["trial_id"].tolist() == ["t2", "t3", "t9"]
    assert shown["pick"].tolist() == [1, 2, 3]  # what analysis.retrain --pick N takes: front()'s row N-1
    assert shown["trial_id"].tolist() == results_folder.front(CONSTRAINED, MULTI)["trial_id"].tolist()
    assert list(shown.columns) == ["pick", "trial_id", "best_val_acc", "latency_ms", "params_m", "model_mb",
                                   "model", "lr"]


@pytest.mark.timeout(60)
def test_single_objective_front_is_accuracy_against_latency_among_candidates():
    # no limits: t0 (the fastest above .85) joins; t8 (no latency) is on no latency front
    shown = report.deployment_front(_unconstrained(), SINGLE)
    assert shown["trial_id"].tolist() == ["t0", "t2", "t3", "t9"]
    assert "pick" not in shown
    # with the limit, t0 is out
    limited = report.deployment_front(CONSTRAINED, dataclasses.replace(SINGLE, limits={"latency_ms": 20.0}))
    assert limited["trial_id"].tolist() == ["t2", "t3", "t9"]
    # results_folder.judge adds `feasible` from the limits, as trials_table does
    lim = dataclasses.replace(SINGLE, limits={"latency_ms": 20})
    judged = report.deployment_front(results_folder.judge(CONSTRAINED.drop(columns=["feasible", "infeasible"]), lim),
                                     lim)
    assert judged["trial_id"].tolist() == ["t2", "t3", "t9"]


@pytest.mark.timeout(60)
def test_rejected_and_infeasible_trials_never_appear_in_the_front(tmp_path):
    page = html.unescape(_render(CONSTRAINED, MULTI, tmp_path))
    front_html = page[page.index("<table"):]
    for out in ("t0", "t1", "t4", "t5", "t6", "t7", "t8"):
        assert f">{out}<" not in front_html
    for on in ("t2", "t3", "t9"):
        assert f">{on}<" in front_html
    assert "--pick N" in page


@pytest.mark.timeout(60)
def test_settings_paragraph_names_objectives_each_limit_and_the_counts():
    record = dataclasses.replace(MULTI, limits={"latency_ms": 20.0, "params_m": 5.0})
    text = html.unescape(report.deployment_settings(CONSTRAINED, record))
    assert "val_acc (max), latency_ms (min)" in text and "ASHA stopped trials on the first, val_acc" in text
    assert "latency_ms <= 20" in text and "params_m <= 5" in text
    assert "7 trial(s) feasible, 3 infeasible, 1 of them rejected" in text
    # judged from the limits as trials_table judges: t6 (params 5) is within, t0, t1, t8 are not
    judged = html.unescape(report.deployment_settings(
        results_folder.judge(CONSTRAINED.drop(columns=["feasible", "infeasible"]), record), record))
    assert "7 trial(s) feasible, 3 infeasible, 1 of them rejected" in judged
    plain = html.unescape(report.deployment_settings(_unconstrained(), SINGLE))
    assert "No constraints" in plain and "val_acc (max)" in plain and "<=" not in plain


@pytest.mark.timeout(120)
@pytest.mark.parametrize("table,record", [(CONSTRAINED, MULTI), (_unconstrained(), SINGLE)],
                         ids=["constrained-multi", "footprint-single"])
def test_section_with_footprint_draws_plots_and_a_front_table(table, record, tmp_path):
    page = _render(table, record, tmp_path)
    assert page.startswith("<section id='deployment'>")
    assert page.count("<img") == 1 and "data:image/png;base64," in page
    assert "<table" in page
    assert "no footprint figures" not in page


@pytest.mark.timeout(60)
def test_trials_without_footprint_get_a_note_and_no_plot(tmp_path):
    """No trial got as far as measuring its model: nothing to plot or list against cost."""
    unmeasured = _unconstrained().drop(columns=["latency_ms", "params_m", "model_mb"])
    page = _render(unmeasured, SINGLE, tmp_path)
    assert "no footprint figures" in page and "<img" not in page and "<table" not in page
    assert "No constraints" in page


@pytest.mark.timeout(120)
def test_section_renders_when_no_trial_was_trained(tmp_path):
    """Every configuration rejected: no best_<metric> column at all, and nothing to list."""
    rejected = CONSTRAINED[CONSTRAINED["status"] == "rejected"].drop(columns=["best_val_acc"])
    page = html.unescape(_render(rejected, MULTI, tmp_path))
    assert "No trained trial" in page and "<table" not in page
    assert "0 trial(s) feasible, 1 infeasible, 1 of them rejected" in page


@pytest.mark.timeout(120)
def test_cost_plot_draws_the_front_the_limit_and_the_best_feasible(tmp_path):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    report._cost_axes(ax, CONSTRAINED, MULTI, "latency_ms")
    step, limit = ax.get_lines()[:2]
    assert step.get_drawstyle() == "steps-post"
    assert list(step.get_xdata()) == [3.0, 5.0, 10.0] and list(step.get_ydata()) == [0.75, 0.80, 0.85]
    assert list(limit.get_xdata()) == [20.0, 20.0] and limit.get_linestyle() == "--"
    labels = [a.get_text() for a in ax.texts]
    assert "latency_ms <= 20" in labels and "t2" in labels  # t2: the best feasible, starred
    assert ax.get_xscale() == "log"  # 2 to 50 ms
    fig2, ax2 = plt.subplots()
    report._cost_axes(ax2, CONSTRAINED[CONSTRAINED["trial_id"].isin(["t2", "t4", "t6"])], MULTI, "latency_ms")
    assert ax2.get_xscale() == "linear"  # 8 to 12 ms
    plt.close("all")


@pytest.mark.timeout(120)
def test_cost_plot_marks_rejected_configurations_and_stars_what_retrain_takes():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    some = CONSTRAINED[CONSTRAINED["trial_id"].isin(["t0", "t1", "t4", "t3"])]
    report._cost_axes(ax, some, MULTI, "latency_ms")
    # t0 scores best but is over the limit; t3 and t4 tie: the star is ranked_with_results' first
    retrain_takes = results_folder.candidates(results_folder.leaderboard(some, MULTI), MULTI).iloc[0]["trial_id"]
    assert retrain_takes in ("t3", "t4")
    stars = [a.get_text() for a in ax.texts if a.get_text().startswith("t")]
    assert stars == [retrain_takes]
    assert "rejected (not trained)" in [t.get_text() for t in ax.get_legend().get_texts()]
    assert ax.get_xlim()[1] > 50  # t1, rejected at 50 ms, is on the plot
    fig2, ax2 = plt.subplots()  # no limits: no star, no rejected marks
    report._cost_axes(ax2, _unconstrained()[lambda t: t["status"] != "rejected"], SINGLE, "latency_ms")
    assert [a.get_text() for a in ax2.texts] == []
    assert "rejected (not trained)" not in [t.get_text() for t in ax2.get_legend().get_texts()]
    plt.close("all")


@pytest.mark.timeout(60)
def test_final_model_latency_line_only_when_retrain_measured_it(tmp_path):
    assert "Final model" not in _render(CONSTRAINED, MULTI, tmp_path)  # not retrained yet
    (tmp_path / "retrained").mkdir()
    metrics_file = tmp_path / "retrained" / "test_metrics.json"
    metrics_file.write_text(json.dumps({"test_acc": 0.9, "final_latency_ms": 12.34, "exported_latency_ms": 4.567,
                                        "final_over_limits": ""}))
    page = _render(CONSTRAINED, MULTI, tmp_path)
    assert "eager 12.3 ms" in page and "exported 4.57 ms" in page and "Over the search" not in page
    metrics_file.write_text(json.dumps({"final_latency_ms": 25.0, "exported_latency_ms": 31.0,
                                        "final_over_limits": "latency_ms 31 > 20"}))
    page = html.unescape(_render(CONSTRAINED, MULTI, tmp_path))
    assert "eager 25 ms, exported 31 ms" in page and "limits: latency_ms 31 > 20" in page
