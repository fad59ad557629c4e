"""A second search warm-started from a first one against a second cold search of the same budget.

For each seed, three real searches (`search.run`: Ray Tune, TPE + ASHA) of the same space on
the same embedded images, each of the same number of trials:
- `first`: cold, sampler seed S;
- `again`: cold again, sampler seed S + 100 (what a user without warm start runs next);
- `warm`: sampler seed S + 100, `--warm-start first`: the first's finished trials seed TPE, and
  its best configuration runs again first.
For the two second searches it counts the trials (in the order the sampler asked for them)
until one comes within 0.5 points of the first search's best val accuracy. The warm search's
re-run of the first's best counts as a trial spent but not as getting there: it repeats a
result the user already has (counted with it, the warm search gets there on its first trial
almost by construction; printed apart). A search that never gets there counts as its number
of trials + 1. Also printed: the best val accuracy each second search reached in its budget.
The two second searches alternate which runs first from seed to seed; asynchronous ASHA and
a lucky early draw make one seed noise, so 3 seeds, medians and spreads.

The goal (set before the full run): the warm-started search gets back to the first's best in
fewer trials than a cold second search, on the median seed. Why: a user warm-starts a second
search (more data, a widened space) to pick up where the first left off; if it takes as many
trials as starting over, the warm start buys them nothing. The last line is
`ratio=<median warm trials / median again trials> goal<1`.

    python bench/warm_start.py                # 3 seeds × 3 searches × 12 trials, 6 epochs of a small CNN
    python bench/warm_start.py --quick        # 1 seed, 3 trials each, 30 images a class: that it works
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


def search(tmp: Path, name: str, seed: int, trials: int, per_class: int,
           warm: Path | None = None) -> list[tuple[float, bool]]:
    """Run one search; return each trial's best val_acc in the order the sampler asked for them,
    and whether it was the warm start's re-run of the earlier best."""
    import pandas as pd

    from search import results_folder, run
    from search import study as study_mod

    space = tmp / f"{name}.yaml"
    space.write_text(SPACE.format(trials=trials, seed=seed, per_class=per_class, grace=GRACE))
    args = [str(space), "--storage", str(tmp), "--name", name] + (["--warm-start", str(warm)] if warm else [])
    with contextlib.redirect_stdout(io.StringIO()):
        assert run.main(args) == 0
    table = pd.read_csv(tmp / name / "trials.csv").set_index("trial_id")
    study = study_mod.load(tmp / name, results_folder.read_record(tmp / name).name)
    own = [t for t in sorted(study.trials, key=lambda t: t.number) if "warm_start_from" not in t.user_attrs]
    return [(float(table.loc[t.user_attrs["trial_id"], "best_val_acc"]), "warm_start_rerun" in t.user_attrs)
            for t in own]


def trials_to_reach(scores: list[float], target: float) -> int | None:
    return next((i + 1 for i, s in enumerate(scores) if s >= target - POINTS / 100), None)


def counted(trials: list[tuple[float, bool]], rerun_reaches: bool) -> list[float]:
    """The trials' scores in order; the warm start's re-run scores nothing unless RERUN_REACHES."""
    return [score if rerun_reaches or not rerun else float("-inf") for score, rerun in trials]


def one_seed(seed: int, trials: int, per_class: int, warm_first: bool) -> dict[str, list[tuple[float, bool]]]:
    """The three searches of SEED; the two second ones in the order WARM_FIRST says."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        runs = {"first": search(tmp, "first", seed, trials, per_class)}
        for name in (("warm", "again") if warm_first else ("again", "warm")):
            runs[name] = search(tmp, name, seed + 100, trials, per_class,
                                warm=tmp / "first" if name == "warm" else None)
    return runs


def spread(values: list[float]) -> str:
    import statistics

    return f"median {statistics.median(values):g} (spread {min(values):g}-{max(values):g})"


def main(argv=None) -> int:
    import statistics

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--quick", action="store_true", help="1 seed, 3 trials each, 30 images a class: that it works")
    ap.add_argument("--no-asha", action="store_true", help="run every trial to the end: asynchronous ASHA "
                    "gives the first trials the full budget, which favours the cold searches' first trials")
    args = ap.parse_args(argv)
    global GRACE
    GRACE = 6 if args.no_asha else GRACE
    per_class = PER_CLASS
    if args.quick:
        args.trials, args.seeds, per_class = 3, [0], 30
    arms = ("again", "warm", "warm, its re-run counted", "first")
    counts: dict[str, list[int]] = {name: [] for name in arms}
    best: dict[str, list[float]] = {"again": [], "warm": []}
    for i, seed in enumerate(args.seeds):
        runs = one_seed(seed, args.trials, per_class, warm_first=i % 2 == 1)
        target = max(score for score, _ in runs["first"])
        scores = {"again": counted(runs["again"], True), "warm": counted(runs["warm"], False),
                  "warm, its re-run counted": counted(runs["warm"], True), "first": counted(runs["first"], True)}
        for name in arms:
            counts[name].append(trials_to_reach(scores[name], target) or args.trials + 1)
        for name in best:
            best[name].append(max(scores[name]))
        print(f"seed {seed}: first search's best val_acc {target:.4f}; trials to come within {POINTS} points of it: "
              + ", ".join(f"{name} {counts[name][-1]}" for name in arms)
              + f"; best val_acc of the second searches (without the re-run): again {best['again'][-1]:.4f}, "
              f"warm {best['warm'][-1]:.4f}", flush=True)
    print(f"trials to reach the first's best over seeds {args.seeds} (of {args.trials} each; never = "
          f"{args.trials + 1}): " + "; ".join(f"{name} {spread(counts[name])}" for name in arms))
    print("best val_acc of the second searches in their budget: "
          + "; ".join(f"{name} {spread([round(v, 4) for v in best[name]])}" for name in best))
    ratio = statistics.median(counts["warm"]) / statistics.median(counts["again"])
    print(f"ratio={ratio:.2f} goal<1")
    return 0


if __name__ == "__main__":
    sys.exit(main())
