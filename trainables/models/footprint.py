"""What a trained model costs where it will run: its size, and how long one image takes.

Users fine-tune EfficientNet-Lite0 or a small CNN because the model has to run on a phone, a
CPU server or an edge box, so every trial measures its model once:
- `params_m`: parameters, in millions; `model_mb`: the size of its weights (what model.pt holds);
- `latency_ms`: one image (batch 1) at the trial's image size on one CPU thread, in
  `torch.inference_mode`: a few warm-up runs, then the median of LATENCY_RUNS;
- on a GPU also `gpu_latency_ms` (batch 1) and `gpu_images_per_s` at the trial's batch size.

The architecture and image size fix these figures, the weights do not change them, so a trial
measures once, before its first epoch, and every report, its last included, carries them
(`trainables.trial.train_loop`); `footprint_s` says what measuring cost the trial. Measuring first
lets a search with limits (`search.constraints`: `TrialContext.limits`, judged by
`trainables.models.limits`) leave a configuration over them untrained. Trials of one search with the
same architecture on the same machine share one measurement (`measure_once`): a latency
measured beside other trials is noisy, and two trials of one model that differ only in their
learning rate must not differ in latency, or the noise would put both on the front.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from filelock import FileLock

LATENCY_RUNS = 20
WARMUP_RUNS = 3


def measure(model: torch.nn.Module, image_size: int, device: torch.device, batch_size: int) -> dict:
    """The figures above for MODEL (the bare module, not its DDP wrapper); the training copy is
    left as it was (its device, mode and the process's torch threads)."""
    started = time.perf_counter()
    cpu_model = copy.deepcopy(model).to("cpu").eval()
    out = {
        "params_m": sum(p.numel() for p in cpu_model.parameters()) / 1e6,
        "model_mb": sum(t.numel() * t.element_size() for t in cpu_model.state_dict().values()) / 2**20,
        "latency_ms": cpu_latency_ms(cpu_model, image_size),
    }
    if device.type == "cuda":
        out.update(gpu_figures(cpu_model.to(device), image_size, batch_size, device))
    out["footprint_s"] = time.perf_counter() - started
    return out


def measure_once(model: torch.nn.Module, image_size: int, device: torch.device, batch_size: int,
                 folder: str | Path) -> dict:
    """`measure`, or the figures an earlier trial of the search measured on this machine for the
    same architecture (its modules as printed, the image size, the device; on a GPU the batch
    size), one JSON file each in FOLDER. Trials that start together wait for the first one's measurement
    (a file lock), so they report one figure, not one each. `footprint_s`: what this call cost."""
    started = time.perf_counter()
    key = f"{model!r}|{image_size}|{device.type}|{batch_size if device.type == 'cuda' else ''}|" \
          f"{torch.__version__}|{platform.node()}"
    path = Path(folder) / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path.with_suffix(".lock")):
        try:
            figures = json.loads(path.read_text())
        except (OSError, ValueError):  # not measured here yet (or a file cut short)
            figures = measure(model, image_size, device, batch_size)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(figures))
            os.replace(tmp, path)
    return {**figures, "footprint_s": time.perf_counter() - started}


def cpu_latency_ms(model: torch.nn.Module, image_size: int, runs: int = LATENCY_RUNS) -> float:
    """Median milliseconds of one batch-1 forward pass on one CPU thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x = torch.zeros(1, 3, image_size, image_size)
        return 1000 * statistics.median(_timed(model, x, runs))
    finally:
        torch.set_num_threads(threads)


def gpu_figures(model: torch.nn.Module, image_size: int, batch_size: int, device: torch.device) -> dict:
    """Batch-1 latency and images/s at BATCH_SIZE of MODEL (in eval mode, on DEVICE)."""
    one = _timed(model, torch.zeros(1, 3, image_size, image_size, device=device), LATENCY_RUNS, sync=True)
    batch = _timed(model, torch.zeros(batch_size, 3, image_size, image_size, device=device), 5, sync=True)
    return {"gpu_latency_ms": 1000 * statistics.median(one), "gpu_images_per_s": batch_size / statistics.median(batch)}


def _timed(model: torch.nn.Module, x: torch.Tensor, runs: int, sync: bool = False) -> list[float]:
    """Seconds of each of RUNS forward passes of X, after WARMUP_RUNS untimed ones."""
    times = []
    with torch.inference_mode():
        for i in range(WARMUP_RUNS + runs):
            started = time.perf_counter()
            model(x)
            if sync:
                torch.cuda.synchronize()
            if i >= WARMUP_RUNS:
                times.append(time.perf_counter() - started)
    return times
