"""A second search warm-started from a first one: how many trials each needs to reach the first's best.

Two real searches (`search.run`: Ray Tune, TPE + ASHA) of the same space on the same embedded
images. The first starts cold; the second gets `--warm-start FIRST` and another sampler seed.
For each it prints the best val accuracy and the trial (in the order the sampler asked for
them) that first came within 0.5 points of the first search's best. The goal: the warm-started
search gets there in fewer trials. The last line is `ratio=<warm trials / cold trials> goal<1`.

    python bench/warm_start.py       # 2 × 16 trials of a small CNN on 3,000 images: about 5 minutes here
    python bench/warm_start.py --quick
"""
from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

POINTS = 0.5
PER_CLASS = 300  # 450 val images: one image is 0.22 points, finer than the 0.5-point bar
GRACE = 2  # ASHA's first rung; --no-asha sets it to the last epoch (every trial runs 6 epochs)
SPACE = """
name: warm-bench
data: {{source: animal-mnist, limit_per_class: {per_class}}}
search:
  num_samples: {trials}
  max_concurrent_trials: 2
  seed: {seed}
  points_to_evaluate: []
  scheduler: {{max_t: 6, grace_period: {grace}, reduction_factor: 3}}
space:
  model: cnn
  image_size: 28
  epochs: 6
  lr: {{float: [1.0e-5, 0.3], log: true}}
  batch_size: {{choice: [16, 32, 64, 128]}}
  cnn_width: {{choice: [8, 16, 32]}}
  cnn_blocks: {{int: [1, 4]}}
  dropout: {{float: [0.0, 0.6]}}
"""


def search(tmp: Path, name: str, seed: int, trials: int, warm: Path | None = None) -> list[float]:
    """Run one search; return each trial's best val_acc in the order the sampler asked for them."""
    import pandas as pd

    from analysis import results
    from search import run
    from search import study as study_mod

    space = tmp / f"{name}.yaml"
    space.write_text(SPACE.format(trials=trials, seed=seed, per_class=PER_CLASS, grace=GRACE))
    args = [str(space), "--storage", str(tmp), "--name", name] + (["--warm-start", str(warm)] if warm else [])
    with contextlib.redirect_stdout(io.StringIO()):
        assert run.main(args) == 0
    table = pd.read_csv(tmp / name / "trials.csv").set_index("trial_id")
    study = study_mod.load(tmp / name, results.read_search_info(tmp / name))
    own = [t for t in sorted(study.trials, key=lambda t: t.number) if "warm_start_from" not in t.user_attrs]
    return [float(table.loc[t.user_attrs["trial_id"], "best_val_acc"]) for t in own]


def trials_to_reach(scores: list[float], target: float) -> int | None:
    return next((i + 1 for i, s in enumerate(scores) if s >= target - POINTS / 100), None)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--quick", action="store_true", help="3 trials each: that it works")
    ap.add_argument("--no-asha", action="store_true", help="run every trial to the end: asynchronous ASHA "
                    "gives the first trials the full budget, which favours the cold search's first trials")
    args = ap.parse_args(argv)
    global GRACE
    GRACE = 6 if args.no_asha else GRACE
    if args.quick:
        args.trials = 3
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cold = search(tmp, "cold", 0, args.trials)
        warm = search(tmp, "warm", 1, args.trials, warm=tmp / "cold")
    target = max(cold)
    n_cold, n_warm = trials_to_reach(cold, target), trials_to_reach(warm, target)
    print(f"cold search: best val_acc {target:.4f}, reached (within {POINTS} points) at trial {n_cold} of {len(cold)}")
    print(f"warm-started search: best val_acc {max(warm):.4f}; within {POINTS} points of the cold best at trial "
          f"{n_warm if n_warm else 'never'} of {len(warm)}")
    ratio = n_warm / n_cold if n_warm else float("inf")
    print(f"ratio={ratio:.2f} goal<1")
    return 0


if __name__ == "__main__":
    sys.exit(main())
