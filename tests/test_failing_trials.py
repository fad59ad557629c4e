"""Trials that go wrong are recorded with a status and a reason, and the search goes on."""
from __future__ import annotations

import pandas as pd
import pytest

from search import results_folder, run
from tests.conftest import require_extra, write_space

SPACE = """
name: failing
data: {{source: animal-mnist, limit_per_class: 12}}
search:
  num_samples: 3
  max_concurrent_trials: 2
  scheduler: {{max_t: 2, grace_period: 2}}
  points_to_evaluate:
    - {{model: cnn, lr: 0.003}}
    - {{model: cnn, lr: 1.0e+35}}
    - {{model: resnet18, pretrained: {garbage}}}
space:
  model: {{choice: [cnn, resnet18]}}
  pretrained: {{choice: [false, {garbage}], when: {{model: resnet18}}}}
  lr: {{choice: [0.003, 1.0e+35]}}
  cnn_width: 4
  batch_size: 16
  image_size: 16
  epochs: 2
"""


def test_diverging_and_crashing_trials_do_not_stop_the_search(ray_cluster, tmp_path, capsys):
    garbage = tmp_path / "weights.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    space_file = write_space(tmp_path / "failing.yaml", SPACE.format(garbage=garbage))
    assert run.main([str(space_file), "--storage", str(tmp_path / "res")]) == 0  # not all trials failed
    out = capsys.readouterr().out
    trials = pd.read_csv(tmp_path / "res" / "failing" / "trials.csv").set_index("lr", drop=False)
    assert sorted(trials["status"]) == ["completed", "diverged", "error"]
    good = trials[trials["status"] == "completed"].iloc[0]
    assert good["lr"] == 0.003 and good["model"] == "cnn" and good["epochs_run"] == 2
    diverged = trials[trials["status"] == "diverged"].iloc[0]
    assert diverged["lr"] == 1e35 and "training loss became nan" in diverged["error"]
    crashed = trials[trials["status"] == "error"].iloc[0]
    assert crashed["model"] == "resnet18" and "ModelError: cannot read weights file" in crashed["error"]
    assert crashed["error_file"].endswith("error.txt")
    # the final summary lists them with their reason
    assert "diverged: training loss became nan" in out and "ModelError: cannot read weights file" in out


def test_a_train_workers_own_line_is_the_reason_even_when_ray_cut_it_from_the_traceback():
    text = ("ray.train.WorkerGroupError: Training failed due to worker errors:\n[Rank 1 Error Snippet]:\n"
            "  File x\n... (Output truncated. See individual worker logs for full details) ...\n"
            "ine 12, in f\nParameter indices which did not receive grad for rank 1: 3 4\n"
            "trainables.trial.train_loop.WorkerError: RuntimeError: Expected to have finished reduction in the prior "
            "iteration before starting a new one.\n")
    assert results_folder.classify_failure(text, {}) == (
        "error", "RuntimeError: Expected to have finished reduction in the prior iteration before starting a new one.")
    diverged = "trainables.trial.train_loop.WorkerError: TrialDiverged: training loss became nan at epoch 1, step 3\n"
    assert results_folder.classify_failure(diverged, {}) == ("diverged", "training loss became nan at epoch 1, step 3")


def test_out_of_memory_is_reported_with_the_sizes_that_caused_it():
    text = "Traceback...\ntorch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n"
    status, reason = results_folder.classify_failure(text, {"batch_size": 512, "image_size": 224})
    assert status == "error" and reason.startswith("out of memory at batch_size=512, image_size=224")


def test_wrapped_errors_report_the_inner_exception():
    text = ("ray.train.WorkerGroupError: Training failed due to worker errors:\n"
            "  File x\nValueError: bad shape (3, 4)\n")
    assert results_folder.classify_failure(text, {}) == ("error", "ValueError: bad shape (3, 4)")


# Ray 2.60's error.txt of a trial whose process was SIGKILLed (tests/test_chaos.py kills them)
KILLED = ("Failure # {n} (occurred at 2026-12-02_17-16-20)\n"
          "The actor died unexpectedly before finishing this task.\n\tclass_name: ImplicitFunc\n"
          "\tactor_id: 80acbb0934e6e301856c8d6f01000000\n\tpid: 16625\n\tnamespace: 7661fe75\n\tip: 192.0.2.2\n"
          "The actor is dead because its worker process has died. Worker exit type: SYSTEM_ERROR Worker exit "
          "detail: Worker unexpectedly exits with a connection error code 2. End of file. Some common causes "
          "include: (1) the process was killed by the OOM killer due to high memory usage, (2) ray stop --force "
          "was called, or (3) the worker crashed unexpectedly due to SIGSEGV or another unexpected error.\n")


@pytest.mark.timeout(60)
def test_a_trial_whose_process_died_says_so_in_one_line():
    died = ("error", "the trial's process died (killed, or out of memory), pid 16625")
    assert results_folder.classify_failure(KILLED.format(n=1), {}) == died
    # retried, then killed again: the last failure is the cause
    earlier = "Failure # 1 (occurred at x)\nTraceback...\nValueError: bad shape (3, 4)\n"
    assert results_folder.classify_failure(earlier + KILLED.format(n=2), {}) == died
    node = KILLED.format(n=1).split("The actor is dead")[0] + "The actor died because its node has died. Node Id: a9\n"
    assert results_folder.classify_failure(node, {})[1].startswith("the trial's node died")
    # Ray's memory monitor killed it: the sizes to lower, as for any out-of-memory error
    oom = KILLED.format(n=1) + "Task was killed due to the node running low on memory.\n"
    assert results_folder.classify_failure(oom, {"batch_size": 64, "image_size": 96})[1].startswith(
        "out of memory at batch_size=64, image_size=96")
    # the actor died of an exception of its own (here, its class failed to import): that exception
    failed = KILLED.format(n=1) + ("Traceback (most recent call last):\n  File x\n"
                                   "RuntimeError: The actor with name ImplicitFunc failed to import on the worker\n")
    assert results_folder.classify_failure(failed, {}) == (
        "error", "RuntimeError: The actor with name ImplicitFunc failed to import on the worker")


def test_when_every_trial_fails_the_command_exits_nonzero_with_the_reason(ray_cluster, tmp_path, capsys):
    space_file = write_space(tmp_path / "allfail.yaml", (
        "data: {source: animal-mnist, limit_per_class: 6}\n"
        "search: {num_samples: 1, max_concurrent_trials: 1}\n"
        "space: {model: cnn, cnn_width: 4, lr: 1.0e+35, batch_size: 8, image_size: 8, epochs: 1}\n"))
    assert run.main([str(space_file), "--storage", str(tmp_path / "res")]) == 1
    err = capsys.readouterr().err
    assert "every trial failed; most common reason: training loss became nan" in err


def test_mlflow_logs_each_trial(ray_cluster, tmp_path):
    mlflow = require_extra("mlflow")  # an optional extra: pip install -e ".[mlflow]"

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # a local store; MLflow 3 retired plain ./mlruns folders
    space_file = write_space(tmp_path / "ml.yaml", (
        "data: {source: animal-mnist, limit_per_class: 6}\n"
        "search: {num_samples: 2, max_concurrent_trials: 1}\n"
        "space: {model: cnn, cnn_width: 4, lr: {float: [1.0e-3, 1.0e-2]}, batch_size: 8, image_size: 8, epochs: 1}\n"))
    assert run.main([str(space_file), "--storage", str(tmp_path / "res"), "--name", "ml", "--mlflow", uri]) == 0
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["ml"])
    assert len(runs) == 2 and runs["metrics.val_acc"].notna().all()
