"""TPE + ASHA against its ablations at equal trial-epochs: which part of the default buys what.

The headline figure of the search (best val accuracy against time at equal compute, 20 seeds,
against Ray's recipe, Optuna alone and the top-K rule) is bench/anytime.py's; this bench defers
to it and only shows each part's effect. Four arms search the same space with the same number
of trials and the same seed, on the embedded data, through real Ray Tune, real Optuna samplers
and the real train loop (`trainables.trial.train_loop.fit`); they differ only in sampler and scheduler:

- `tpe+asha`: the search's own `EpochOptunaSearch(TPESampler)` + `ASHAScheduler` on `epoch`
  (ASHA-stopped trials reach TPE as pruned, with their epochs);
- `tpe+fifo`: TPE, every trial run to `max_t`;
- `random+asha`: random sampling, ASHA stopping;
- `random+fifo`: random search run to the full budget, the reference.

Trials here are plain Tune function trials that call `fit` in the trial process: this compares
search algorithms, and per-trial start-up (bench/overhead.py) would add the same constant to all.

Compute is counted in trial-epochs, in the order the reports reached Tune. The arms are
compared at equal compute: for E trial-epochs, the best val accuracy each arm had reported
when it had spent E (an arm that finished before E is marked done). Printed for E at 1/9,
1/3, 1/2 and all of the full (FIFO) budget, and at E = what TPE + ASHA spent in all on that
seed. Asynchronous ASHA promotes by arrival time, so one run per seed is noise: 5 seeds, the
arms' order rotating from seed to seed, medians and spreads over the seeds.

The goal (set before the full run): at the compute TPE + ASHA spends in all, its best val
accuracy is no lower than random + FIFO's at the same compute, on the median seed. Why: a user
who keeps the default sampler and scheduler needs at least as good a model as the plainest
search gives for the same compute; by how much it does better, and over time, is
bench/anytime.py's figure. The last line is `ratio=<median over seeds of TPE + ASHA's best
val accuracy / random + FIFO's, both at E = TPE + ASHA's total> goal>=1`.

    python bench/asha.py            # 5 seeds, 24 trials each, up to 9 epochs, 100 images a class
    python bench/asha.py --quick    # 1 seed, 3 trials, 2 epochs: that it works
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GOAL = 1.0
FRACTIONS = (1 / 9, 1 / 3, 1 / 2, 1)  # of the full budget: where the arms are compared

SPACE = """
name: asha-bench
data: {{source: animal-mnist, limit_per_class: {per_class}}}
search:
  num_samples: {trials}
  scheduler: {{max_t: {max_t}, grace_period: 1, reduction_factor: {rf}}}
space:
  model: cnn
  image_size: 28
  epochs: {max_t}
  lr: {{float: [1.0e-4, 0.3], log: true}}
  batch_size: {{choice: [32, 64, 128]}}
  cnn_width: {{choice: [8, 16, 32]}}
  cnn_blocks: {{int: [1, 4]}}
  dropout: {{float: [0.0, 0.5]}}
"""


def tune_session():
    """`fit`'s in-process session, reporting to the Tune trial instead of keeping a history."""
    from ray import tune

    from trainables.trial.sessions import LocalSession

    class TuneSession(LocalSession):
        def report(self, row: dict, save) -> None:
            tune.report(row)  # no checkpoints: nothing here resumes or retrains

    return TuneSession(device="cpu")


def function_trial(config: dict, context) -> None:
    import torch

    from trainables.trial.train_loop import fit

    torch.set_num_threads(1)
    fit(config, context, tune_session())


ARMS = ("tpe+asha", "tpe+fifo", "random+asha", "random+fifo")


def run_arm(arm: str, spec, context, seed: int, storage: Path) -> list[float]:
    """One search; returns every epoch's val_acc in the order the reports reached Tune (so its
    length is the trial-epochs trained, and a prefix is what the search had spent by then)."""
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from search.searcher import EpochOptunaSearch
    from search.tuner import yaml_space

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    s = spec.search
    sampler_name, scheduler_name = arm.split("+")
    sampler = (optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(2, s.num_samples // 3)))
               if sampler_name == "tpe" else optuna.samplers.RandomSampler(seed=seed))
    scheduler = (ASHAScheduler(time_attr="epoch", max_t=spec.max_epochs(), grace_period=s.scheduler.grace_period,
                               reduction_factor=s.scheduler.reduction_factor)
                 if scheduler_name == "asha" else FIFOScheduler())
    searcher = EpochOptunaSearch(yaml_space(spec), metric="val_acc", mode="max", sampler=sampler)
    arrivals: dict[tuple[str, int], float] = {}  # (trial, epoch) -> val_acc, in arrival order

    class Arrivals(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            arrivals.setdefault((trial.trial_id, int(result["epoch"])), float(result["val_acc"]))

    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(function_trial, context=context), {"CPU": 1}),
        tune_config=tune.TuneConfig(metric="val_acc", mode="max", search_alg=searcher, scheduler=scheduler,
                                    num_samples=s.num_samples, max_concurrent_trials=2, reuse_actors=True),
        run_config=tune.RunConfig(name=f"{arm}-{seed}", storage_path=str(storage), verbose=0,
                                  callbacks=[Arrivals()]),
    )
    tuner.fit()
    return list(arrivals.values())


def best_at(curve: list[float], spent: int) -> float | None:
    """The best val accuracy a search had reported when it had spent SPENT trial-epochs; None
    when it ended before (it never spent that much)."""
    return max(curve[:spent]) if len(curve) >= spent else None


def at_equal_compute(runs: dict[str, list[list[float]]], spent: list[int]) -> str:
    """One line: each arm's median best val accuracy at SPENT[seed] trial-epochs on each seed."""
    parts = []
    for arm in ARMS:
        best = [best_at(c, e) for c, e in zip(runs[arm], spent)]
        reached = [b for b in best if b is not None]
        done = len(best) - len(reached)
        parts.append(f"{arm} {statistics.median(reached):.4f}" if reached else f"{arm} done")
        if reached and done:
            parts[-1] += f" ({done} seed(s) done before)"
    return " | ".join(parts)


def summary(runs: dict[str, list[list[float]]], budget: int) -> float:
    """Print the arms at equal trial-epochs and their whole searches; return the goal's ratio."""
    for f in FRACTIONS:
        e = max(1, round(f * budget))
        print(f"at {e} trial-epochs ({f:.2f} of the full budget), median best val_acc: "
              f"{at_equal_compute(runs, [e] * len(runs['random+fifo']))}")
    for arm in ARMS:
        epochs, best = [len(c) for c in runs[arm]], [max(c) for c in runs[arm]]
        print(f"{arm:12s} whole search: median {statistics.median(epochs):6.1f} trial-epochs (spread "
              f"{min(epochs)}-{max(epochs)}), median best val_acc {statistics.median(best):.4f} "
              f"(spread {min(best):.4f}-{max(best):.4f})")
    spent = [len(c) for c in runs["tpe+asha"]]
    print(f"at TPE + ASHA's whole spend (per seed {', '.join(map(str, spent))} trial-epochs), median best "
          f"val_acc: {at_equal_compute(runs, spent)}")
    ratios = [max(a) / best_at(r, len(a)) for a, r in zip(runs["tpe+asha"], runs["random+fifo"])]
    print("tpe+asha / random+fifo at equal trial-epochs, per seed: " + ", ".join(f"{x:.3f}" for x in ratios)
          + f" (spread {min(ratios):.3f}-{max(ratios):.3f})")
    print("the search's headline figure (best val against time, at equal compute, against Ray's recipe and "
          "others) is bench/anytime.py's; this bench shows the parts")
    return statistics.median(ratios)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 seed, 3 trials of at most 2 epochs, 30 images per class")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="sampler seeds (default 0 1 2 3 4)")
    ap.add_argument("--trials", type=int, default=24, help="trials per arm (default 24: ASHA's savings grow with "
                    "the trials it can stop)")
    ap.add_argument("--max-t", type=int, default=9, help="epochs of a full trial (default 9: ASHA rungs at 1, 3, 9)")
    ap.add_argument("--reduction-factor", type=int, default=3, help="ASHA keeps the top 1/this at each rung")
    ap.add_argument("--per-class", type=int, default=100, help="images per class before the split (default 100: "
                    "700 train, 150 val, so that 5 seeds take about half an hour)")
    args = ap.parse_args(argv)
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2, 3, 4])
    trials, max_t, per_class = (3, 2, 30) if args.quick else (args.trials, args.max_t, args.per_class)

    import ray

    from search import space as space_mod
    from search.inputs import trial_context
    from search.launch import start_ray
    from trainables.data import dataset

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "space.yaml").write_text(SPACE.format(per_class=per_class, trials=trials, max_t=max_t,
                                                     rf=args.reduction_factor))
        spec = space_mod.load(tmp / "space.yaml")
        index = dataset.prepare("animal-mnist", spec.data.split.model_dump(exclude={"seed"}), 0, per_class)
        dataset.save_split(index, tmp / "split.csv")
        context = trial_context(spec, index.root, index.classes, tmp / "split.csv", tmp)
        counts = index.counts()
        print(f"{trials} trials per arm, max {max_t} epochs, {sum(counts['train'].values())} train / "
              f"{sum(counts['val'].values())} val images; seeds {seeds}", flush=True)
        os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
        start_ray(None, verbose=False)
        runs: dict[str, list[list[float]]] = {arm: [] for arm in ARMS}
        try:
            for i, seed in enumerate(seeds):
                for arm in ARMS[i % len(ARMS):] + ARMS[:i % len(ARMS)]:  # each seed starts with another arm
                    runs[arm].append(run_arm(arm, spec, context, seed, tmp / "runs"))
                print(f"seed {seed}: " + " | ".join(f"{arm} {len(runs[arm][-1])} trial-epochs, best "
                                                    f"{max(runs[arm][-1]):.4f}" for arm in ARMS), flush=True)
        finally:
            ray.shutdown()
        ratio = summary(runs, trials * max_t)
    print(f"ratio={ratio:.3f} goal>={GOAL:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
