"""The two trial runtimes on a real local Ray cluster (CPU, gloo).

Single-worker trials train in their Tune actor, which Tune reuses from trial to trial without
carrying memory along; multi-worker trials run as a TorchTrainer (DDP) whatever the freezing
knobs, with equal shards (no rank waits forever) and metrics over the whole val set.
"""
from __future__ import annotations

import json
import statistics
import subprocess
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from analysis import retrain
from search import run
from tests.conftest import make_folder, write_space
from trainables.data import dataset
from trainables.params import TrialParams
from trainables.trial import checkpoint, sessions, train_loop


def _rows(trial_dir: str | Path) -> list[dict]:
    return [json.loads(x) for x in (Path(trial_dir) / "result.json").read_text().splitlines() if x.strip()]


REUSE_SPACE = """
name: reuse
data: {source: animal-mnist, limit_per_class: 20}
search:
  num_samples: 20
  max_concurrent_trials: 1
  scheduler: {max_t: 2, grace_period: 1, reduction_factor: 2}
  points_to_evaluate: [{model: cnn, lr: 0.003}]   # a good first trial, so that ASHA stops weaker ones
space:
  model: {choice: [cnn, efficientnet_lite0]}
  pretrained: {choice: [true, false], when: {model: efficientnet_lite0}}
  cnn_width: {choice: [16], when: {model: cnn}}
  lr: {choice: [1.0e-6, 0.003]}
  batch_size: 16
  image_size: 32
  epochs: 2
"""


@pytest.mark.timeout(600)
def test_single_worker_trials_reuse_one_actor_and_do_not_grow_its_memory(ray_cluster, tmp_path):
    """20 trials one after the other in one process, some stopped by ASHA: each trial's model,
    optimizer and batches are released before the next (a Lite0 kept alive with its Adam state
    adds ~75 MB a trial)."""
    space = write_space(tmp_path / "reuse.yaml", REUSE_SPACE)
    assert run.main([str(space), "--storage", str(tmp_path / "res")]) == 0
    trials = pd.read_csv(tmp_path / "res" / "reuse" / "trials.csv")
    assert len(trials) == 20 and set(trials["status"]) == {"completed", "stopped"}, trials["status"].tolist()
    assert (trials["status"] == "stopped").any()  # ASHA stopped some, and their actor went on
    ends = sorted((_rows(d)[-1] for d in trials["trial_dir"]), key=lambda r: (r["timestamp"], r["time_total_s"]))
    assert len({r["worker_pid"] for r in ends}) == 1, [r["worker_pid"] for r in ends]  # one process, 20 trials
    # What the trials before each one left behind: after the first few trials (thread pools) it
    # stays flat (a kept model alone adds ~40 MB over these trials; with Adam state, ~3x that).
    memory = [r["worker_memory_at_start_mb"] for r in ends]
    grew = statistics.median(memory[15:]) - statistics.median(memory[5:10])
    assert grew < 20, f"private memory grew by {grew:.0f} MB from trials 6-10 to 16-20: {[round(m) for m in memory]}"


def _presplit(root: Path) -> Path:
    """53 train images (shards of 27 and 26 at two workers: with batch 5 the smaller one used to
    run one step fewer and the other rank waited for it forever) and 19 val images."""
    make_folder(root / "train", {"a": 27, "b": 26}, seed=1)
    make_folder(root / "val", {"a": 10, "b": 9}, seed=2)
    make_folder(root / "test", {"a": 5, "b": 5}, seed=3)
    return root


DDP_SPACE = """
name: ddp
data: {{source: {data}}}
search:
  num_samples: 1
  max_failures: 1
  scheduler: {{max_t: {epochs}, grace_period: {epochs}}}
resources: {{workers_per_trial: 2, cpus_per_worker: 1}}
space:
  model: efficientnet_lite0
  pretrained: {pretrained}
  head_epochs: 1
  unfreeze: 2
  unfreeze_every: 1
  lr: 0.003
  batch_size: 5
  image_size: 32
  epochs: {epochs}
"""


def _train_worker_pids() -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=,args=", "-A"], capture_output=True, text=True).stdout.splitlines()
    return [int(ln.split()[0]) for ln in out if "ray::RayTrainWorker" in ln]


def _registered_checkpoints(train_runs: Path) -> int:
    """Checkpoints the Train run has registered (written in full), from its own snapshot file."""
    try:
        snapshot = next(train_runs.glob("train-*/checkpoint_manager_snapshot.json"))
        return len(json.loads(snapshot.read_text())["checkpoint_results"])
    except (StopIteration, OSError, ValueError, KeyError):  # not there yet, or being written
        return 0


def _kill_a_worker_after(train_runs: Path, checkpoints: int, killed: list, stop: threading.Event) -> None:
    """Once the Train run has registered `checkpoints` checkpoints, SIGKILL one of its workers."""
    while not stop.is_set():
        if _registered_checkpoints(train_runs) >= checkpoints:
            pids = _train_worker_pids()
            if pids:
                subprocess.run(["kill", "-9", str(pids[0])])
                killed.append(pids[0])
                return
        time.sleep(0.1)


@pytest.mark.timeout(600)
def test_two_worker_trial_with_unfreezing_survives_a_killed_worker(ray_cluster, tmp_path):
    """head_epochs, unfreeze and unfreeze_every change DDP's trained set at epochs 2 and 3; a
    worker killed after epoch 2 makes Train restart the group from its checkpoint, where the
    set is applied before DDP wraps the model. The train split does not divide into the two
    shards; the val metrics cover all 19 val images, and equal an evaluation of the checkpoint."""
    epochs = 5
    root = _presplit(tmp_path / "imgs")
    space = write_space(tmp_path / "ddp.yaml", DDP_SPACE.format(data=root, epochs=epochs, pretrained="true"))
    exp = tmp_path / "res" / "ddp"
    killed, stop = [], threading.Event()
    killer = threading.Thread(target=_kill_a_worker_after, args=(exp / "train_runs", 2, killed, stop), daemon=True)
    killer.start()
    try:
        assert run.main([str(space), "--storage", str(tmp_path / "res")]) == 0
    finally:
        stop.set()
        killer.join(timeout=10)
    assert killed, "the trial ended before a worker could be killed"
    trial = pd.read_csv(exp / "trials.csv").iloc[0]
    assert trial["status"] == "completed" and trial["epochs_run"] == epochs, trial.to_dict()
    rows = _rows(trial["trial_dir"])
    assert sorted({r["epoch"] for r in rows}) == list(range(1, epochs + 1))
    assert len({r["worker_pid"] for r in rows}) == 2  # rank 0 before and after the restart
    assert [r["trainable_blocks"] for r in rows if r["epoch"] <= 3][:3] == [0, 1, 2]
    assert all(r["val_images"] == 19 for r in rows)

    model, meta = checkpoint.load(trial["checkpoint"])
    split = dataset.read_split(exp / "split.csv", ("val",))
    x, y = dataset.load_images(str(root), split, meta["class_names"], meta["image_size"])
    best = next(r for r in rows if r.get("checkpoint_path") == trial["checkpoint"])  # its report
    assert train_loop.evaluate(model, meta, x, y)["val_acc"] == pytest.approx(best["val_acc"])


@pytest.mark.timeout(300)
def test_a_worker_exception_reaches_trials_csv_with_its_own_line(ray_cluster, tmp_path):
    garbage = tmp_path / "weights.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    root = _presplit(tmp_path / "imgs")
    space = write_space(tmp_path / "ddp.yaml", DDP_SPACE.format(data=root, epochs=1, pretrained=garbage)
                        .replace("max_failures: 1", "max_failures: 0"))
    assert run.main([str(space), "--storage", str(tmp_path / "res")]) == 1
    trial = pd.read_csv(tmp_path / "res" / "ddp" / "trials.csv").iloc[0]
    assert trial["status"] == "error"
    assert trial["error"].startswith("ModelError: cannot read weights file"), trial["error"]
    assert Path(trial["error_file"]).is_file()


@pytest.mark.timeout(300)
def test_a_two_worker_trial_over_a_limit_ends_untrained_on_every_rank(ray_cluster, tmp_path, capsys):
    """Rank 0 measures; had the other rank not heard its decision, it would train alone and wait
    in its first collective for ever."""
    root = _presplit(tmp_path / "imgs")
    text = DDP_SPACE.format(data=root, epochs=1, pretrained="false").replace(
        "  max_failures: 1", "  max_failures: 0\n  constraints: {max_params_m: 1}")
    text = text.replace("  head_epochs: 1\n  unfreeze: 2\n  unfreeze_every: 1\n", "")  # pretrained knobs
    space = write_space(tmp_path / "ddp.yaml", text)
    assert run.main([str(space), "--storage", str(tmp_path / "res")]) == 1  # every configuration over the limit
    trial = pd.read_csv(tmp_path / "res" / "ddp" / "trials.csv").iloc[0]
    assert trial["status"] == "rejected" and trial["infeasible"].startswith("params_m 3.")
    capsys.readouterr()
    assert retrain.main([str(tmp_path / "res" / "ddp")]) == 2  # nothing trained within the limits: one line
    err = capsys.readouterr().err
    assert "no trained trial meets the search's constraints (params_m <= 1)" in err and err.count("\n") == 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize("n,batch", [(53, 5), (193, 5), (7, 2), (100, 8)])
def test_every_rank_runs_the_same_steps_over_equal_shards(n, batch):
    params = TrialParams(batch_size=batch)
    x, y = torch.zeros((n, 3, 4, 4), dtype=torch.uint8), torch.arange(n) % 3
    ranks = [train_loop.Batches(x, y, params, ["a", "b", "c"], torch.device("cpu"), shard=(r, 2)) for r in (0, 1)]
    chunks = [b.chunks() for b in ranks]
    assert len(chunks[0]) == len(chunks[1]) == len(ranks[0])
    seen = torch.cat([torch.cat(c) for c in chunks])
    assert set(seen.tolist()) == set(range(n))  # every image is in some shard
    assert len(seen) <= n + 1 + 2  # padded by at most one image, less a dropped 1-image batch per rank


@pytest.mark.timeout(10)
@pytest.mark.parametrize("cpus,total,free,cores,threads", [
    (1, 2, 0, 2, 1),     # two trials on two cores: one thread each
    (1, 2, 1, 2, 2),     # the last trial alone: both cores
    (1, 16, 12, 16, 4),  # four trials share twelve idle cores
    (2, 16, 14, 8, 8),   # never more threads than cores
])
def test_a_trial_takes_its_share_of_the_idle_cpus(cpus, total, free, cores, threads):
    assert sessions.threads_with_idle_cpus(cpus, total, free, cores) == threads


@pytest.mark.timeout(30)
@pytest.mark.parametrize("resources,ray_train,concurrent", [
    ({}, False, 2),                                       # one CPU a trial on 2 CPUs; driver tokens do not count
    ({"use_ray_train": True}, True, 1),                   # one trial_driver token left
    ({"workers_per_trial": 2}, True, 1),                  # two CPUs a trial
])
def test_the_space_decides_the_runtime_and_how_many_trials_fit(tmp_path, resources, ray_train, concurrent):
    from search import space as space_mod
    from search import tuner

    sets = [f"resources.{k}={json.dumps(v)}" for k, v in resources.items()]
    auto = REUSE_SPACE.replace("max_concurrent_trials: 1", "max_concurrent_trials: auto")
    spec = space_mod.load(write_space(tmp_path / "s.yaml", auto), sets)
    assert tuner.uses_ray_train(spec) is ray_train
    assert tuner.concurrency(spec, {"CPU": 2, "trial_driver": 1}) == concurrent
