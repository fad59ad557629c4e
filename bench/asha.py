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
prints each arm's median and spread. The goal, held on medians over the seeds: TPE + ASHA's
trial-epochs are at most 1/3 of random+fifo's, and its per-seed accuracy gap to random+fifo's
best is within 0.5 points. The last line is
`ratio=<median tpe+asha epochs / median random+fifo epochs> goal<=0.33`, or `ratio=inf` when
the median accuracy gap misses 0.5 points.

    python bench/asha.py            # 5 seeds, 12 trials each, up to 9 epochs, 150 images a class
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


def function_trial(config: dict) -> None:
    import torch

    from trainables.train_loop import fit

    torch.set_num_threads(1)
    fit(config, tune_session())


ARMS = ("tpe+asha", "tpe+fifo", "random+asha", "random+fifo")


def run_arm(arm: str, spec, context: dict, seed: int, storage: Path) -> tuple[int, float]:
    """One search; returns (trial-epochs trained, best val_acc any trial reached at any epoch)."""
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from search.optuna_space import YamlSpace
    from search.ray_compat import EpochOptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    s = spec.search
    sampler_name, scheduler_name = arm.split("+")
    sampler = (optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(2, s.num_samples // 3)))
               if sampler_name == "tpe" else optuna.samplers.RandomSampler(seed=seed))
    scheduler = (ASHAScheduler(time_attr="epoch", max_t=spec.max_epochs(), grace_period=s.scheduler.grace_period,
                               reduction_factor=s.scheduler.reduction_factor)
                 if scheduler_name == "asha" else FIFOScheduler())
    searcher = EpochOptunaSearch(YamlSpace({n: k.model_dump() for n, k in spec.knobs.items()}, context),
                                 metric="val_acc", mode="max", sampler=sampler)
    tuner = tune.Tuner(
        tune.with_resources(function_trial, {"CPU": 1}),
        tune_config=tune.TuneConfig(metric="val_acc", mode="max", search_alg=searcher, scheduler=scheduler,
                                    num_samples=s.num_samples, max_concurrent_trials=2, reuse_actors=True),
        run_config=tune.RunConfig(name=f"{arm}-{seed}", storage_path=str(storage), verbose=0),
    )
    grid = tuner.fit()
    epochs, best = 0, 0.0
    for result in grid:
        df = result.metrics_dataframe
        if df is None or df.empty:
            continue
        epochs += int(df["epoch"].max())
        best = max(best, float(df["val_acc"].max()))
    return epochs, best


def summary(runs: dict[str, list[tuple[int, float]]]) -> float:
    """Print each arm's median and spread; return the goal's ratio (inf if the accuracy bar is missed)."""
    import statistics

    med = {}
    for arm in ARMS:
        epochs, best = [r[0] for r in runs[arm]], [r[1] for r in runs[arm]]
        med[arm] = statistics.median(epochs), statistics.median(best)
        print(f"{arm:12s} median {med[arm][0]:6.1f} trial-epochs (spread {min(epochs)}-{max(epochs)}), "
              f"median best val_acc {med[arm][1]:.4f} (spread {min(best):.4f}-{max(best):.4f})")
    gaps = [100 * (r[1] - a[1]) for a, r in zip(runs["tpe+asha"], runs["random+fifo"])]
    gap = statistics.median(gaps)
    ratio = med["tpe+asha"][0] / max(1, med["random+fifo"][0])
    print(f"tpe+asha against random+fifo: median epochs ratio {ratio:.2f}, median accuracy gap {gap:+.2f} points "
          f"(per seed: {', '.join(f'{g:+.2f}' for g in gaps)}; {'within' if gap <= GOAL_POINTS else 'MISSES'} "
          f"{GOAL_POINTS} points)")
    return ratio if gap <= GOAL_POINTS else float("inf")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 seed, 3 trials of at most 2 epochs, 30 images per class")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="sampler seeds (default 0 1 2 3 4)")
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--max-t", type=int, default=9, help="epochs of a full trial (default 9: ASHA rungs at 1, 3, 9)")
    ap.add_argument("--reduction-factor", type=int, default=3, help="ASHA keeps the top 1/this at each rung")
    ap.add_argument("--per-class", type=int, default=150, help="images per class before the split (default 150: "
                    "1050 train, 220 val)")
    args = ap.parse_args(argv)
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2, 3, 4])
    trials, max_t, per_class = (3, 2, 30) if args.quick else (args.trials, args.max_t, args.per_class)

    import ray

    from search import space as space_mod
    from search.run import start_ray
    from trainables import data

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "space.yaml").write_text(SPACE.format(per_class=per_class, trials=trials, max_t=max_t,
                                                     rf=args.reduction_factor))
        spec = space_mod.load(tmp / "space.yaml")
        index = data.prepare("animal-mnist", spec.data.split.model_dump(exclude={"seed"}), 0, per_class)
        data.save_split(index, tmp / "split.csv")
        context = {"data_root": str(index.root), "split_file": str(tmp / "split.csv"), "class_names": index.classes,
                   "metric": "val_acc", "mode": "max", "cache_dir": str(data.default_cache_dir())}
        counts = index.counts()
        print(f"{trials} trials per arm, max {max_t} epochs, {sum(counts['train'].values())} train / "
              f"{sum(counts['val'].values())} val images; seeds {seeds}", flush=True)
        os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
        start_ray(None, verbose=False)
        runs: dict[str, list[tuple[int, float]]] = {arm: [] for arm in ARMS}
        try:
            for seed in seeds:
                for arm in ARMS:
                    runs[arm].append(run_arm(arm, spec, context, seed, tmp / "runs"))
                print(f"seed {seed}: " + " | ".join(f"{arm} {runs[arm][-1][0]} trial-epochs, best {runs[arm][-1][1]:.4f}"
                                                    for arm in ARMS), flush=True)
        finally:
            ray.shutdown()
        worst = summary(runs)
    print(f"ratio={worst:.2f} goal<={GOAL_EPOCHS:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
