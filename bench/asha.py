"""TPE + ASHA against its ablations: trial-epochs spent and best val accuracy, per seed and median.

Four arms search the same space with the same number of trials and the same seed, on the
embedded data, through real Ray Tune, real Optuna samplers and the real train loop
(`trainables.train_loop.fit`); they differ only in sampler and scheduler, so each part's effect
shows:

- `tpe+asha`: the search's own `EpochOptunaSearch(TPESampler)` + `ASHAScheduler` on `epoch`
  (ASHA-stopped trials reach TPE as pruned, with their epochs);
- `tpe+fifo`: TPE, every trial run to `max_t`;
- `random+asha`: random sampling, ASHA stopping;
- `random+fifo`: random search run to the full budget, the reference.

Trials here are plain Tune function trials that call `fit` in the trial process (no Ray
Train worker group): this compares search algorithms, and per-trial start-up (measured in
bench/overhead.py) would only add the same constant to both arms.

Asynchronous ASHA promotes by arrival time, so one run per seed is noise: it runs 5 seeds and
prints each arm's median and spread. The goal, as the ASHA paper measures it (anytime): TPE +
ASHA reaches random + FIFO's best val accuracy, within 0.5 points, having spent at most 1/3 of
the trial-epochs random + FIFO spent in all. Trial-epochs are counted in the order the reports
reached Tune. The last line is `ratio=<median over seeds of TPE + ASHA's trial-epochs to get
there / random + FIFO's> goal<=0.33` (`inf` when the median seed never got there). The whole
search's totals are printed too.

    python bench/asha.py            # 5 seeds, 24 trials each, up to 9 epochs, 100 images a class
    python bench/asha.py --quick    # 1 seed, 3 trials, 2 epochs
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GOAL_EPOCHS, GOAL_POINTS = 1 / 3, 0.5

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

    from trainables.sessions import LocalSession

    class TuneSession(LocalSession):
        def report(self, row: dict, save) -> None:
            tune.report(row)  # no checkpoints: nothing here resumes or retrains

    return TuneSession(device="cpu")


def function_trial(config: dict, context) -> None:
    import torch

    from trainables.train_loop import fit

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


def epochs_to_reach(curve: list[float], target: float) -> int | None:
    """Trial-epochs a search had spent when a report first came within GOAL_POINTS of TARGET."""
    return next((i + 1 for i, v in enumerate(curve) if v >= target - GOAL_POINTS / 100), None)


def summary(runs: dict[str, list[list[float]]]) -> float:
    """Print each arm's median and spread, and the trial-epochs TPE + ASHA needed to reach random +
    FIFO's best; return the goal's ratio (inf if it never got there on the median seed)."""
    import statistics

    for arm in ARMS:
        epochs, best = [len(c) for c in runs[arm]], [max(c) for c in runs[arm]]
        print(f"{arm:12s} median {statistics.median(epochs):6.1f} trial-epochs (spread {min(epochs)}-{max(epochs)}), "
              f"median best val_acc {statistics.median(best):.4f} (spread {min(best):.4f}-{max(best):.4f})")
    ratios, lines = [], []
    for tpe, ref in zip(runs["tpe+asha"], runs["random+fifo"]):
        reach = epochs_to_reach(tpe, max(ref))
        ratios.append(reach / len(ref) if reach else float("inf"))
        lines.append(f"{reach or 'never'}/{len(ref)}")
    gaps = [100 * (max(a) - max(r)) for a, r in zip(runs["tpe+asha"], runs["random+fifo"])]  # > 0: TPE + ASHA ahead
    spent = {arm: statistics.median([len(c) for c in runs[arm]]) for arm in ("tpe+asha", "random+fifo")}
    per_seed = ", ".join(f"{g:+.2f}" for g in gaps)
    print(f"tpe+asha, whole search: {spent['tpe+asha'] / spent['random+fifo']:.2f} of random+fifo's median "
          f"trial-epochs; its best val_acc minus random+fifo's: median {statistics.median(gaps):+.2f} points "
          f"(per seed {per_seed})")
    ratio = statistics.median(ratios)
    print(f"tpe+asha reached random+fifo's best within {GOAL_POINTS} points after "
          f"{', '.join(lines)} of random+fifo's trial-epochs (per seed): median {ratio:.2f}")
    return ratio


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
    from search.run import start_ray, trial_context
    from trainables import data

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "space.yaml").write_text(SPACE.format(per_class=per_class, trials=trials, max_t=max_t,
                                                     rf=args.reduction_factor))
        spec = space_mod.load(tmp / "space.yaml")
        index = data.prepare("animal-mnist", spec.data.split.model_dump(exclude={"seed"}), 0, per_class)
        data.save_split(index, tmp / "split.csv")
        context = trial_context(spec, index.root, index.classes, tmp / "split.csv", tmp)
        counts = index.counts()
        print(f"{trials} trials per arm, max {max_t} epochs, {sum(counts['train'].values())} train / "
              f"{sum(counts['val'].values())} val images; seeds {seeds}", flush=True)
        os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
        start_ray(None, verbose=False)
        runs: dict[str, list[list[float]]] = {arm: [] for arm in ARMS}
        try:
            for seed in seeds:
                for arm in ARMS:
                    runs[arm].append(run_arm(arm, spec, context, seed, tmp / "runs"))
                print(f"seed {seed}: " + " | ".join(f"{arm} {len(runs[arm][-1])} trial-epochs, best "
                                                    f"{max(runs[arm][-1]):.4f}" for arm in ARMS), flush=True)
        finally:
            ray.shutdown()
        ratio = summary(runs)
    print(f"ratio={ratio:.2f} goal<={GOAL_EPOCHS:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
