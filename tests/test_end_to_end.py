"""A real search, small: real Ray cluster, Optuna TPE, ASHA, Ray Train workers, embedded images.

It runs the shipped spaces/smoke.yaml: three `cnn` trials on 16 px images, one at a time so
that ASHA's decision is certain: the first (a good learning rate) sets the rung-1 cutoff, the
second (lr=1e-6, learns nothing) falls below it and must be stopped after epoch 1.
"""
from __future__ import annotations

import base64
import re
import shutil
import subprocess
import time

import optuna
import pandas as pd
import pytest
import ray
import torch

from analysis import rank, retrain
from analysis import report as analysis_report
from search import run
from trainables import checkpoint, data
from tests.conftest import ROOT



def _alive_train_workers() -> int:
    from ray.util.state import list_actors

    return sum(1 for a in list_actors(filters=[("state", "=", "ALIVE")]) if a.class_name == "RayTrainWorker")


def test_search_rank_retrain(ray_cluster, tmp_path, animal_root, capsys):
    smoke = ROOT / "spaces" / "smoke.yaml"
    args = [str(smoke), "--storage", str(tmp_path / "results"), "--name", "e2e", "--set", "checkpoint.keep=1"]
    assert run.main(args) == 0
    out = capsys.readouterr().out
    exp = tmp_path / "results" / "e2e"
    assert "stopped by ASHA after epoch 1/3" in out and f"results: {exp}" in out

    # No Train worker outlives its trial, ASHA-stopped ones included: every CPU comes back.
    deadline = time.time() + 60
    while time.time() < deadline and (ray.available_resources().get("CPU", 0) < 2 or _alive_train_workers()):
        time.sleep(1)
    assert ray.available_resources().get("CPU", 0) == 2 and _alive_train_workers() == 0

    study = optuna.load_study(study_name="e2e", storage=f"sqlite:///{exp / 'optuna.db'}")  # optuna-dashboard's view
    assert len(study.trials) == 3
    assert all(list((exp / f"trial_{t.user_attrs['trial_id']}").glob("events.out.tfevents.*")) for t in study.trials)

    trials = pd.read_csv(exp / "trials.csv")
    assert len(trials) == 3 and set(trials["status"]) <= {"completed", "stopped"}
    bad = trials[(trials["lr"] - 1e-6).abs() < 1e-12].iloc[0]
    assert bad["status"] == "stopped" and bad["epochs_run"] == 1
    assert (trials["status"] == "completed").any()
    assert study.best_value == pytest.approx(trials["best_val_acc"].max())
    assert {"split.csv", "space.yaml", "data.json", "search.json"} <= {p.name for p in exp.iterdir()}

    # The best checkpoint loads (weights_only) and predicts the val images better than chance.
    best = trials.sort_values("best_val_acc", ascending=False).iloc[0]
    model, meta = checkpoint.load(best["checkpoint"])
    val = data.read_split(exp / "split.csv", ("val",))
    x, y = data.load_images(animal_root, val, meta["class_names"], meta["image_size"])
    acc = float((checkpoint.predict(model, meta, x).argmax(1) == y).float().mean())
    assert acc == pytest.approx(best["best_val_acc"], abs=1e-6) and acc > 0.1

    assert rank.main([str(exp)]) == 0
    board = pd.read_csv(exp / "leaderboard.csv")
    assert board["best_val_acc"].is_monotonic_decreasing and board.iloc[0]["trial_id"] == best["trial_id"]

    assert retrain.main([str(exp)]) == 0
    out = capsys.readouterr().out
    report = pd.read_json(exp / "retrained" / "test_metrics.json", typ="series")
    assert report["test_images"] == 40 and report["test_acc"] > 0.1 + 0.15  # chance is 0.1
    assert f"test accuracy {report['test_acc']:.4f}" in out
    assert (exp / "retrained" / "model" / "model.pt").exists()
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
    for section in ("id='summary'", "id='leaderboard'", "id='curves'", "id='knobs'", "id='best'", "id='test'"):
        assert section in page
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) >= 6 and all(len(base64.b64decode(i)) > 2000 for i in images)
    knobs_table = page[page.index("id='knobs'"):page.index("id='best'")]
    assert "<td>lr</td>" in knobs_table
    order = re.findall(r"<td>([0-9a-f]{8})</td>", page[page.index("id='leaderboard'"):page.index("id='curves'")])
    assert order == list(board["trial_id"])
    assert "95% Wilson interval" in page
    chromium = shutil.which("chromium")
    if chromium:  # where Debian's Chromium is installed: the page renders from disk, plots included
        shot = tmp_path / "report.png"
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--no-first-run", f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=1200,4000",
                        f"--screenshot={shot}", (exp / "report.html").as_uri()], capture_output=True, timeout=120)
        assert shot.stat().st_size > 100_000  # a blank page is a few kB
