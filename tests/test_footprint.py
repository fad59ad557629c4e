"""Each trial's model footprint: parameters, weights size and batch-1 CPU latency, measured once."""
from __future__ import annotations

import pytest
import torch

from tests.test_train_loop import config_for
from trainables.models import footprint, registry
from trainables.trial import checkpoint, sessions, train_loop


@pytest.mark.timeout(300)
def test_the_same_model_measures_the_same_twice_and_is_left_as_it_was(tmp_path):
    model = registry.build({"model": "efficientnet_lite0", "pretrained": False}, 3).train()
    threads = torch.get_num_threads()
    first = footprint.measure(model, 64, torch.device("cpu"), 8)
    second = footprint.measure(model, 64, torch.device("cpu"), 8)
    assert first["params_m"] == second["params_m"] == pytest.approx(
        sum(p.numel() for p in model.parameters()) / 1e6)
    assert first["model_mb"] == second["model_mb"]
    assert 1 / 3 < first["latency_ms"] / second["latency_ms"] < 3  # a shared machine: within noise
    assert model.training and torch.get_num_threads() == threads  # the training copy is untouched
    checkpoint.save(tmp_path, model, {"arch": "efficientnet_lite0"})
    on_disk = (tmp_path / checkpoint.WEIGHTS).stat().st_size / 2**20
    assert first["model_mb"] == pytest.approx(on_disk, rel=0.02)  # what model.pt holds


@pytest.mark.timeout(120)
def test_a_larger_image_takes_longer():
    model = registry.build({"model": "cnn", "cnn_width": 32, "cnn_blocks": 3}, 3)
    small = footprint.cpu_latency_ms(model, 16)
    large = footprint.cpu_latency_ms(model, 128)
    assert large > 3 * small  # 64 times the pixels


@pytest.mark.timeout(300)
def test_every_report_from_the_first_epoch_carries_one_measurement(folder, tmp_path):
    session = sessions.LocalSession()
    train_loop.fit(*config_for(folder, tmp_path, lr=0.01, epochs=3), session)
    rows = session.history
    assert all(r["params_m"] > 0 and r["model_mb"] > 0 and r["latency_ms"] > 0 for r in rows)
    assert len({(r["latency_ms"], r["footprint_s"]) for r in rows}) == 1  # measured once, before epoch 1


@pytest.mark.timeout(120)
def test_one_architecture_is_measured_once_per_machine_and_another_is_not_taken_for_it(tmp_path):
    """Two trials of one model (other learning rates, other weights) get one latency: measured
    apart on a busy machine, noise alone would set them apart on the accuracy/latency front."""
    cpu = torch.device("cpu")
    first = footprint.measure_once(registry.build({"model": "cnn", "cnn_width": 8}, 3), 32, cpu, 8, tmp_path)
    again = footprint.measure_once(registry.build({"model": "cnn", "cnn_width": 8, "seed": 5}, 3), 32, cpu, 8, tmp_path)
    assert {k: v for k, v in again.items() if k != "footprint_s"} == \
        {k: v for k, v in first.items() if k != "footprint_s"}
    assert len(list(tmp_path.glob("*.json"))) == 1
    wider = footprint.measure_once(registry.build({"model": "cnn", "cnn_width": 16}, 3), 32, cpu, 8, tmp_path)
    larger = footprint.measure_once(registry.build({"model": "cnn", "cnn_width": 8}, 3), 64, cpu, 8, tmp_path)
    assert wider["params_m"] > first["params_m"] and larger["params_m"] == first["params_m"]
    assert larger["latency_ms"] != first["latency_ms"]  # measured itself, at its own image size
    assert len(list(tmp_path.glob("*.json"))) == 3


def _measure_in_another_process(folder: str, queue) -> None:
    torch.set_num_threads(1)
    model = registry.build({"model": "cnn", "cnn_width": 16}, 3)
    queue.put(footprint.measure_once(model, 48, torch.device("cpu"), 8, folder)["latency_ms"])


@pytest.mark.timeout(120)
def test_trials_that_start_together_report_one_measurement(tmp_path):
    """Two trials of one model starting at once: the second waits for the first's figures."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_measure_in_another_process, args=(str(tmp_path), queue)) for _ in range(2)]
    for p in procs:
        p.start()
    try:
        latencies = [queue.get(timeout=100) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    assert latencies[0] == latencies[1]
    assert len(list(tmp_path.glob("*.json"))) == 1
