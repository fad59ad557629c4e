"""The final model's refits as Ray tasks, side by side, against the same refits one after another.

One real search (a small CNN on embedded images), then `python -m analysis.retrain` on its
results folder, each time in a process of its own and into a fresh folder, two ways:
- `tasks` (the default): the refits as Ray tasks, each with the trial's resources (1 CPU
  here), as many at once as the machine holds; retrain starts its local Ray and stops it;
- `serial` (`--serial`): the same refits one after another in the retrain's own process, no
  Ray, torch on every core (what retrain did before, and still does where one refit fills the
  machine).
Interleaved, tasks then serial, for ROUNDS rounds. Timed: the whole command, which is what a
user waits for (Ray's start, the refits, the test and the export, alike in both), and the
refits alone (first start to last end, from the times each refit recorded in test_metrics.json).

The goal, set before the first run: on a 2-core machine the tasks take no longer than the
serial refits (the whole command's medians). The last line is
`ratio=<tasks median / serial median> goal<=1.0`.

    python bench/retrain_parallel.py            # 4 refits of 4 epochs, 3 rounds
    python bench/retrain_parallel.py --rounds 5
    python bench/retrain_parallel.py --quick    # 2 refits of a tiny model, 1 round: that it works
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SPACE = """
name: retrain-bench
data: {{source: animal-mnist, limit_per_class: {per_class}}}
search:
  num_samples: 1
  max_concurrent_trials: 1
  scheduler: {{max_t: {epochs}, grace_period: {epochs}, reduction_factor: 2}}
space:
  model: cnn
  cnn_width: {width}
  lr: 0.003
  batch_size: 32
  image_size: {size}
  epochs: {epochs}
"""
FULL = {"per_class": 300, "width": 32, "size": 32, "epochs": 4}
QUICK = {"per_class": 30, "width": 8, "size": 16, "epochs": 1}
ARMS = {"tasks": [], "serial": ["--serial"]}


def search(tmp: Path, sizes: dict) -> Path:
    """One trial of the space SIZES describes; its results folder."""
    from search import run

    space = tmp / "space.yaml"
    space.write_text(SPACE.format(**sizes))
    with contextlib.redirect_stdout(io.StringIO()):
        assert run.main([str(space), "--storage", str(tmp / "res")]) == 0
    return tmp / "res" / "retrain-bench"


def timed_retrain(results: Path, out: Path, refits: int, extra: list[str]) -> tuple[float, float, str]:
    """Run analysis.retrain once in a process group of its own (killed by its id if anything is
    left); return its wall seconds, its refits' seconds (first start to last end) and the
    estimate line it printed."""
    args = [sys.executable, "-m", "analysis.retrain", str(results), "--refits", str(refits), "--out", str(out), *extra]
    started = time.perf_counter()
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        printed, _ = proc.communicate(timeout=1800)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    wall = time.perf_counter() - started
    assert proc.returncode == 0, printed[-3000:]
    members = [m for m in json.loads((out / "test_metrics.json").read_text())["final_members"]
               if m["made_by"] == "refit"]
    refit_seconds = max(m["ended"] for m in members) - min(m["started"] for m in members)
    estimate = next((ln for ln in printed.splitlines() if ln.startswith("refits: ")), "(no estimate printed)")
    return wall, refit_seconds, estimate


def spread(values: list[float]) -> str:
    return f"median {statistics.median(values):.1f}s, min {min(values):.1f}s, max {max(values):.1f}s"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--refits", type=int, default=4, help="refits per retrain (analysis.retrain's default: 4)")
    ap.add_argument("--quick", action="store_true", help="a tiny model, 2 refits, 1 round: that it works")
    args = ap.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.quick:
        args.rounds, args.refits = 1, 2
    print(f"{os.cpu_count()} cores; a cnn (width {sizes['width']}) at {sizes['size']} px, {sizes['per_class']} images "
          f"a class, {sizes['epochs']} epoch(s); {args.refits} refits per retrain; {args.rounds} round(s), tasks then "
          "serial", flush=True)
    walls, refit_times = {arm: [] for arm in ARMS}, {arm: [] for arm in ARMS}
    with tempfile.TemporaryDirectory(prefix="bench-retrain-") as tmp:
        results = search(Path(tmp), sizes)
        for i in range(args.rounds):
            for arm, extra in ARMS.items():
                load = os.getloadavg()[0]  # the machine is shared: a busy one slows torch's threads most
                wall, refits, estimate = timed_retrain(results, Path(tmp) / f"{arm}-{i}", args.refits, extra)
                walls[arm].append(wall)
                refit_times[arm].append(refits)
                print(f"round {i + 1} {arm:6s}: {wall:.1f}s in all, refits {refits:.1f}s (load {load:.1f} before); "
                      f"it said: {estimate}", flush=True)
    for arm in ARMS:
        print(f"{arm:6s}: whole command {spread(walls[arm])}; refits {spread(refit_times[arm])}")
    print(f"ratio={statistics.median(walls['tasks']) / statistics.median(walls['serial']):.3f} goal<=1.0")
    return 0


if __name__ == "__main__":
    sys.exit(main())
