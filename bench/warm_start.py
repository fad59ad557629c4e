"""A second search warm-started from a first one: trials to reach the first's best, over seeds.

For each seed, three real searches (`search.run`: Ray Tune, TPE + ASHA) of the same space on
the same embedded images:
- `first`: cold, sampler seed S;
- `again`: cold again, sampler seed S + 100 (what a user without warm start would run next);
- `warm`: sampler seed S + 100, `--warm-start first`: the first's finished trials seed TPE, and
  its best configuration runs again first. Also counted without that re-run ("TPE's own
  trials"), to show what the seeding alone does.
For each it counts the trials (in the order the sampler asked for them) until one comes within
0.5 points of the first search's best val accuracy. Asynchronous ASHA and a lucky early draw
make one seed noise, so the goal is held on medians over the seeds: the warm-started search
gets there in fewer trials than the first search took, and than a second cold search. The
last line is `ratio=<median warm trials / median first trials> goal<1`; a search that never
gets there counts as its number of trials + 1.

    python bench/warm_start.py                # 3 seeds × 3 searches × 12 trials, 6 epochs of a small CNN
    python bench/warm_start.py --quick        # 1 seed, 3 trials each: that it works
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


def search(tmp: Path, name: str, seed: int, trials: int, warm: Path | None = None) -> list[tuple[float, bool]]:
    """Run one search; return each trial's best val_acc in the order the sampler asked for them,
    and whether it was the warm start's re-run of the earlier best."""
    import pandas as pd

    from search import results_folder, run
    from search import study as study_mod

    space = tmp / f"{name}.yaml"
    space.write_text(SPACE.format(trials=trials, seed=seed, per_class=PER_CLASS, grace=GRACE))
    args = [str(space), "--storage", str(tmp), "--name", name] + (["--warm-start", str(warm)] if warm else [])
    with contextlib.redirect_stdout(io.StringIO()):
        assert run.main(args) == 0
    table = pd.read_csv(tmp / name / "trials.csv").set_index("trial_id")
    study = study_mod.load(tmp / name, results_folder.read_search_info(tmp / name))
    own = [t for t in sorted(study.trials, key=lambda t: t.number) if "warm_start_from" not in t.user_attrs]
    return [(float(table.loc[t.user_attrs["trial_id"], "best_val_acc"]), "warm_start_rerun" in t.user_attrs)
            for t in own]


def trials_to_reach(scores: list[float], target: float) -> int | None:
    return next((i + 1 for i, s in enumerate(scores) if s >= target - POINTS / 100), None)


def main(argv=None) -> int:
    import statistics

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--quick", action="store_true", help="1 seed, 3 trials each: that it works")
    ap.add_argument("--no-asha", action="store_true", help="run every trial to the end: asynchronous ASHA "
                    "gives the first trials the full budget, which favours the cold searches' first trials")
    args = ap.parse_args(argv)
    global GRACE
    GRACE = 6 if args.no_asha else GRACE
    if args.quick:
        args.trials, args.seeds = 3, [0]
    counts: dict[str, list[int]] = {"first": [], "again": [], "warm": [], "warm, TPE's own trials": []}
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            runs = {"first": search(tmp, "first", seed, args.trials),
                    "again": search(tmp, "again", seed + 100, args.trials),
                    "warm": search(tmp, "warm", seed + 100, args.trials, warm=tmp / "first")}
        runs["warm, TPE's own trials"] = [r for r in runs["warm"] if not r[1]]  # without the re-run of the best
        target = max(score for score, _ in runs["first"])
        for name, trials in runs.items():
            scores = [score for score, _ in trials]
            counts[name].append(trials_to_reach(scores, target) or len(scores) + 1)
        print(f"seed {seed}: first search's best val_acc {target:.4f}; trials to come within {POINTS} points of it: "
              + ", ".join(f"{name} {counts[name][-1]} (best {max(s for s, _ in t):.4f})" for name, t in runs.items()),
              flush=True)
    med = {name: statistics.median(c) for name, c in counts.items()}
    print(f"median trials over seeds {args.seeds} (of {args.trials} each): "
          + ", ".join(f"{name} {m:g}" for name, m in med.items()))
    print(f"ratio={med['warm'] / med['first']:.2f} goal<1")
    return 0


if __name__ == "__main__":
    sys.exit(main())
