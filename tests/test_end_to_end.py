"""A real search, small: real Ray cluster, Optuna TPE, ASHA, trials in reused Tune actors, embedded images.

It runs the shipped spaces/smoke.yaml: three `cnn` trials on 16 px images, one at a time so
that ASHA's decision is certain: the first (a good learning rate) sets the rung-1 cutoff, the
second (lr=1e-6, learns nothing) falls below it and must be stopped after epoch 1. The search
runs once per module; its results folder then serves every test here.
"""
from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import pickle
import re
import shutil
import subprocess

import optuna
import pandas as pd
import pytest
import ray
import torch

from analysis import predict, rank, retrain
from analysis import report as analysis_report
from search import run, tune_files
from search import study as study_mod
from tests.conftest import ROOT, alive_pids, wait_until
from trainables.context import TrialContext
from trainables.data import dataset
from trainables.models import inference
from trainables.params import TrialParams
from trainables.trial import checkpoint


def _trial_processes(exp) -> set[int]:
    """The processes the search's trials ran in: each report names its worker's PID (here, the
    reused Tune actors single-worker trials train in)."""
    reports = [tune_files.read_reports(d) for d in exp.glob("trial_*")]
    return {int(pid) for r in reports if "worker_pid" in r for pid in r["worker_pid"].dropna()}


@pytest.fixture(scope="module")
def searched(ray_cluster, tmp_path_factory, animal_root):
    """(results folder, what the search printed) of one run of spaces/smoke.yaml."""
    storage = tmp_path_factory.mktemp("e2e") / "results"
    args = [str(ROOT / "spaces" / "smoke.yaml"), "--storage", str(storage), "--name", "e2e",
            "--set", "checkpoint.keep=1"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert run.main(args) == 0
    return storage / "e2e", out.getvalue()


@pytest.mark.timeout(600)
def test_search_rank_retrain(searched, tmp_path, animal_root, capsys):
    exp, out = searched
    assert "stopped by ASHA after epoch 1/3" in out and f"results: {exp}" in out

    # No process a trial ran in outlives the search, ASHA-stopped trials included: each is gone,
    # by PID, and every CPU comes back (Ray's worker may take a moment to exit once Tune stops it).
    pids = _trial_processes(exp)
    assert pids, "no report named its worker's PID"
    wait_until(lambda: not alive_pids(pids) and ray.available_resources().get("CPU", 0) == 2, 60,
               lambda: f"trial processes still running: {alive_pids(pids)}; CPUs free: "
                       f"{ray.available_resources().get('CPU', 0)} of 2")

    trials = pd.read_csv(exp / "trials.csv")
    assert len(trials) == 3 and set(trials["status"]) <= {"completed", "stopped"}
    bad = trials[(trials["lr"] - 1e-6).abs() < 1e-12].iloc[0]
    assert bad["status"] == "stopped" and bad["epochs_run"] == 1
    assert (trials["status"] == "completed").any()
    # every trial, stopped ones too, measured its model once: what it costs to run (#16)
    assert (trials["latency_ms"] > 0).all() and (trials["model_mb"] > 0).all()
    assert trials["params_m"].nunique() == 1  # the smoke space searches lr only: one architecture
    # The study optuna-dashboard shows: each ASHA-stopped trial PRUNED, each completed one COMPLETE
    # with its best score, both with every epoch as an intermediate value.
    study = optuna.load_study(study_name="e2e", storage=study_mod.storage(exp))
    assert len(study.trials) == 3
    for t in study.trials:
        row = trials[trials["trial_id"] == t.user_attrs["trial_id"]].iloc[0]
        assert list((exp / f"trial_{row['trial_id']}").glob("events.out.tfevents.*"))
        assert sorted(t.intermediate_values) == list(range(1, row["epochs_run"] + 1))
        want = optuna.trial.TrialState.PRUNED if row["status"] == "stopped" else optuna.trial.TrialState.COMPLETE
        assert t.state == want and t.value == pytest.approx(
            t.intermediate_values[row["epochs_run"]] if row["status"] == "stopped" else row["best_val_acc"])
    assert study.best_value == pytest.approx(trials["best_val_acc"].max())
    assert {"split.csv", "space.yaml", "data.json", "search.json"} <= {p.name for p in exp.iterdir()}

    # The best checkpoint loads (weights_only) and predicts the val images better than chance.
    best = trials.sort_values("best_val_acc", ascending=False).iloc[0]
    model, meta = checkpoint.load(best["checkpoint"])
    val = dataset.read_split(exp / "split.csv", ("val",))
    x, y = dataset.load_images(animal_root, val, meta["class_names"], meta["image_size"])
    acc = float((inference.predict(model, meta, x).argmax(1) == y).float().mean())
    assert acc == pytest.approx(best["best_val_acc"], abs=1e-6) and acc > 0.1

    assert rank.main([str(exp)]) == 0
    board = pd.read_csv(exp / "leaderboard.csv")
    tied = trials[trials["best_val_acc"] == best["best_val_acc"]]  # ties go to the faster model
    assert board["best_val_acc"].is_monotonic_decreasing
    assert board.iloc[0]["trial_id"] in set(tied.loc[tied["latency_ms"] == tied["latency_ms"].min(), "trial_id"])

    assert retrain.main([str(exp)]) == 0
    out = capsys.readouterr().out
    report = pd.read_json(exp / "retrained" / "test_metrics.json", typ="series")
    assert report["test_images"] == 40 and report["test_acc"] > 0.1 + 0.15  # chance is 0.1
    assert f"test accuracy {report['test_acc']:.4f}" in out
    assert (exp / "retrained" / "model" / "model.pt").exists()
    # the default final model: the best checkpoint and four refits on train+val, averaged; each
    # refit replays the trial's own LR path up to its best epoch
    assert report["final_policy"] == "ensemble" and [m["trained_on"] for m in report["final_members"]] == [
        "train"] + ["train+val"] * 4
    refit_epochs = int(trials.loc[trials["trial_id"] == report["trial_id"], "best_epoch"].iloc[0])
    trial_lrs = [r["lr"] for r in report["trial_curve"]][:refit_epochs]
    for curve in report["refit_curves"].values():
        assert [r["lr"] for r in curve] == pytest.approx(trial_lrs)
    final, meta = checkpoint.load(exp / "retrained" / "model")
    assert meta["ensemble"] == 5 and isinstance(final, inference.Ensemble)
    assert torch.load(exp / "retrained" / "model" / "model.pt", weights_only=True)

    # The test split is used once: a second call reports the stored result, it does not re-test.
    assert retrain.main([str(exp)]) == 0
    assert "already tested" in capsys.readouterr().out
    low, high = report["test_acc_ci95"]
    assert low < report["test_acc"] < high
    assert retrain.main([str(exp), "--top", "2", "--out", str(tmp_path / "top2")]) == 0
    assert capsys.readouterr().out.count("candidate ") == 2  # both reruns shown before the pick

    # The report: every section, real plots, every searched knob ranked, the leaderboard in order.
    assert analysis_report.main([str(exp)]) == 0
    page = (exp / "report.html").read_text()
    for section in analysis_report.SECTIONS:
        assert f"id='{section}'" in page
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) >= 6 and all(len(base64.b64decode(i)) > 2000 for i in images)
    knobs_table = page[page.index("id='knobs'"):page.index("id='best'")]
    assert "<td>lr</td>" in knobs_table
    order = re.findall(r"<td>([0-9a-f]{8})</td>", page[page.index("id='leaderboard'"):page.index("id='deployment'")])
    assert order == list(board["trial_id"])
    assert "95% Wilson interval" in page


@pytest.mark.timeout(60)
def test_tune_writes_the_plain_files_analysis_reads(searched):
    """Tune's file layout that search/tune_files.py reads instead of unpickling: an upgrade that
    changes it fails here."""
    exp, _ = searched
    [state_file] = sorted(exp.glob(tune_files.STATE_GLOB))[-1:]
    entries = json.loads(state_file.read_text())["trial_data"]
    assert len(entries) == 3
    for entry in entries:
        assert isinstance(entry, list) and len(entry) == 2 and all(isinstance(e, str) for e in entry)
        state = json.loads(entry[0])
        assert state["status"] == "TERMINATED" and state["relative_logdir"] == f"trial_{state['trial_id']}"
        trial_dir = exp / state["relative_logdir"]
        params = json.loads((trial_dir / tune_files.PARAMS_FILE).read_text())
        assert params["lr"] == state["config"]["lr"]
        # hyperparameters only: the search-wide context reaches trials by tune.with_parameters
        assert "run" not in params and set(params) <= set(TrialParams.model_fields), params
        reports = tune_files.read_reports(trial_dir)
        assert list(reports["epoch"]) == list(range(1, len(reports) + 1))
        assert any((trial_dir / name).is_dir() for name in reports["checkpoint_dir_name"])  # the one kept
    assert [t.trial_id for t in tune_files.read_trials(exp)] == [json.loads(e[0])["trial_id"] for e in entries]
    context = TrialContext.load(exp)  # what every trial got, saved for resume and retrain
    assert context.class_names == tuple(json.loads((exp / "data.json").read_text())["classes"])
    assert context.split_file == str(exp / "split.csv") and not context.resources.ray_train


def _screenshot(page: str, tmp_path, name: str):
    """Chromium's rendering of an HTML page, as an RGB pixel array (1200×3000)."""
    import numpy as np
    from PIL import Image

    src, shot = tmp_path / f"{name}.html", tmp_path / f"{name}.png"
    src.write_text(page)
    subprocess.run([shutil.which("chromium"), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--disable-background-networking", "--no-first-run", f"--user-data-dir={tmp_path / 'chromium'}",
                    "--window-size=1200,3000", f"--screenshot={shot}", src.as_uri()], capture_output=True, timeout=120)
    return np.asarray(Image.open(shot).convert("RGB"))


def _only(page: str, section: str | None) -> str:
    """The page with every section hidden but SECTION (and no title)."""
    keep = f"section#{section}{{display:block}}" if section else ""
    return page.replace("</head>", f"<style>h1,section{{display:none}}{keep}</style></head>")


@pytest.mark.timeout(300)
def test_report_renders_every_section(searched, tmp_path):
    """Pixels, not strings: Chromium renders each section of the report on its own, and each one
    draws text and (where it holds plots) colour; the page with every section hidden draws none."""
    if not shutil.which("chromium"):
        if os.environ.get("HPO_TEST_REQUIRE_BROWSER"):
            pytest.fail("chromium is not installed (.ci/run installs Debian's chromium)")
        pytest.skip("chromium not installed: `apt-get install -y chromium` to check the report's rendering")
    exp, _ = searched
    assert analysis_report.main([str(exp)]) == 0
    page = (exp / "report.html").read_text()
    inked = lambda px: int((px.min(axis=2) < 200).sum())  # noqa: E731  dark enough to be text or a line
    coloured = lambda px: int((px.max(axis=2).astype(int) - px.min(axis=2) > 60).sum())  # noqa: E731
    assert inked(_screenshot(_only(page, None), tmp_path, "none")) == 0
    assert inked(_screenshot(page, tmp_path, "all")) > 50_000
    for section in analysis_report.SECTIONS:
        px = _screenshot(_only(page, section), tmp_path, section)
        assert inked(px) > 2_000, f"section {section} renders (almost) nothing"
        if section in ("deployment", "curves", "knobs", "best"):
            assert coloured(px) > 100, f"section {section} shows no plot"


class _Trap:
    """Unpickling this appends a line to MARKER: the proof that something ran a file's code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'a').write('unpickled\\n')",)


def _arm(value, trap_hex: str):
    """A JSON value with every pickled field Tune wrote (hex strings, cloudpickle fallbacks, the
    trial states nested as JSON strings) replaced by the trap."""
    if isinstance(value, dict):
        if value.get("_type") == "CLOUDPICKLE_FALLBACK":
            return {**value, "value": trap_hex}
        return {k: _arm(v, trap_hex) for k, v in value.items()}
    if isinstance(value, list):
        return [_arm(v, trap_hex) for v in value]
    if isinstance(value, str) and re.fullmatch(r"80(0[2-5])[0-9a-f]*", value):
        return trap_hex
    if isinstance(value, str) and value.startswith("{"):
        with contextlib.suppress(ValueError):
            return json.dumps(_arm(json.loads(value), trap_hex))
    return value


def _booby_trap(exp, marker) -> int:
    """Every pickle in a results folder replaced by the trap; returns how many were armed."""
    trap = pickle.dumps(_Trap(marker))
    pickles = [p for p in exp.rglob("*.pkl")]
    for p in pickles:
        p.write_bytes(trap)
    for state in exp.glob("experiment_state-*.json"):
        state.write_text(json.dumps(_arm(json.loads(state.read_text()), trap.hex())))
    return len(pickles)


@pytest.mark.timeout(600)
def test_analysis_never_unpickles_a_received_results_folder(searched, tmp_path, capsys):
    exp = tmp_path / "received"
    shutil.copytree(searched[0], exp, ignore=shutil.ignore_patterns("retrained", "report.html"))
    marker = tmp_path / "code-ran.txt"
    assert _booby_trap(exp, marker) >= 5  # tuner, searcher state, and each trial's params.pkl

    assert rank.main([str(exp)]) == 0
    assert analysis_report.main([str(exp)]) == 0
    assert retrain.main([str(exp), "--out", str(tmp_path / "final")]) == 0
    assert predict.main([str(tmp_path / "final" / "model"), str(ROOT / "tests" / "data" / "chelsea.jpg")]) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out and "chelsea.jpg" in out
    assert not marker.exists(), "analysis ran code from a pickle in the results folder"

    # The trap is live: Tune's own reader, which analysis used to call, runs it.
    from ray import tune

    with contextlib.suppress(Exception):
        tune.ExperimentAnalysis(str(exp))
    assert marker.exists()


@pytest.mark.timeout(120)
def test_a_results_folder_of_an_older_version_is_refused_in_one_line(searched, tmp_path, capsys):
    """A folder an older hpo-finetune wrote (no schema_version in search.json): rank, report,
    retrain, --resume and a new search over it each refuse it whole, in one line, before Ray
    starts; and one of a newer layout too."""
    exp = tmp_path / "old" / "e2e"
    shutil.copytree(searched[0], exp, ignore=shutil.ignore_patterns("retrained", "report.html"))
    record = json.loads((exp / "search.json").read_text())
    (exp / "search.json").write_text(json.dumps({k: v for k, v in record.items() if k != "schema_version"}))
    search = [str(ROOT / "spaces" / "smoke.yaml"), "--storage", str(exp.parent), "--name", "e2e"]
    commands = [lambda: rank.main([str(exp)]), lambda: analysis_report.main([str(exp)]),
                lambda: retrain.main([str(exp), "--out", str(tmp_path / "final")]),
                lambda: run.main([*search, "--resume"]), lambda: run.main(search)]
    for command in commands:
        assert command() == 2
        assert capsys.readouterr().err.strip().splitlines() == [
            f"error: {exp} was written by an older hpo-finetune (no schema_version in search.json); "
            "run the search again, into a new folder"]
    (exp / "search.json").write_text(json.dumps({**record, "schema_version": 0}))
    assert run.main([*search, "--resume"]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: {exp} was written by another hpo-finetune (schema_version 0 in search.json")
    assert not (tmp_path / "final").exists()  # refused before anything was made


@pytest.mark.timeout(120)
def test_a_results_folder_without_its_context_is_refused_in_one_line(searched, tmp_path, capsys):
    """context.json removed (or cut short) after the search: --resume says so in one line before
    Ray starts, not with a traceback from inside the launch."""
    exp = tmp_path / "cut" / "e2e"
    shutil.copytree(searched[0], exp, ignore=shutil.ignore_patterns("retrained", "report.html"))
    (exp / "context.json").unlink()
    search = [str(ROOT / "spaces" / "smoke.yaml"), "--storage", str(exp.parent), "--name", "e2e", "--resume"]
    assert run.main(search) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: --resume: {exp}: context.json is missing or damaged (FileNotFoundError); run the search again, "
        "into a new folder"]
    (exp / "context.json").write_text("{")
    assert run.main(search) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: --resume: {exp}: context.json is missing or damaged (JSONDecodeError)"), line
