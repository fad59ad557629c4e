"""TPE + ASHA vs. random search run to the full budget: trial-epochs spent and best val accuracy.

Both arms search the same space with the same number of trials and the same seed, on the
embedded data, through real Ray Tune, real Optuna samplers (TPE vs. random) and the real
train loop (`trainables.train_loop.fit`). The arms differ only in sampler and scheduler:

- `tpe+asha`: the search's own `OptunaSearch(TPESampler)` + `ASHAScheduler` on `epoch`;
- `random-full`: `OptunaSearch(RandomSampler)` + FIFO: every trial runs all `max_t` epochs.

Trials here are plain Tune function trials that call `fit` in the trial process (no Ray
Train worker group): this compares search algorithms, and per-trial start-up (measured in
bench/overhead.py) would only add the same constant to both arms.

Per seed it prints each arm's trial-epochs and best val accuracy; the goal is that TPE + ASHA
comes within 0.5 points of the random full-budget best with at most 1/3 of its trial-epochs.
The last line is the worst seed's epoch ratio, `ratio=<asha epochs / random epochs> goal<=0.33`,
or `ratio=inf` for a seed where TPE + ASHA missed the accuracy bar.

    python bench/asha.py            # 3 seeds, 16 trials each, up to 16 epochs: about 20 minutes here
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


def run_arm(arm: str, spec, context: dict, seed: int, storage: Path) -> tuple[int, float]:
    """One search; returns (trial-epochs trained, best val_acc any trial reached at any epoch)."""
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.optuna import OptunaSearch

    from search.optuna_space import YamlSpace

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    s = spec.search
    if arm == "tpe+asha":
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(2, s.num_samples // 3)))
        scheduler = ASHAScheduler(time_attr="epoch", max_t=spec.max_epochs(), grace_period=s.scheduler.grace_period,
                                  reduction_factor=s.scheduler.reduction_factor)
    else:
        sampler, scheduler = optuna.samplers.RandomSampler(seed=seed), FIFOScheduler()
    searcher = OptunaSearch(YamlSpace({n: k.model_dump() for n, k in spec.knobs.items()}, context),
                            metric="val_acc", mode="max", sampler=sampler)
    tuner = tune.Tuner(
        tune.with_resources(function_trial, {"CPU": 1}),
        tune_config=tune.TuneConfig(metric="val_acc", mode="max", search_alg=searcher, scheduler=scheduler,
                                    num_samples=s.num_samples, max_concurrent_trials=2),
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 seed, 3 trials of at most 2 epochs, 30 images per class")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="sampler seeds (default 0 1 2)")
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--max-t", type=int, default=16, help="epochs of a full trial (default 16: ASHA rungs at 1, 4, 16)")
    ap.add_argument("--reduction-factor", type=int, default=4, help="ASHA keeps the top 1/this at each rung")
    ap.add_argument("--per-class", type=int, default=300, help="images per class before the split (default 300: "
                    "2100 train, 450 val)")
    args = ap.parse_args(argv)
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
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
        worst = 0.0
        try:
            for seed in seeds:
                asha_epochs, asha_best = run_arm("tpe+asha", spec, context, seed, tmp / "runs")
                rand_epochs, rand_best = run_arm("random-full", spec, context, seed, tmp / "runs")
                ratio = asha_epochs / max(1, rand_epochs)
                gap = 100 * (rand_best - asha_best)
                ok = gap <= GOAL_POINTS
                print(f"seed {seed}: tpe+asha {asha_epochs} trial-epochs, best val_acc {asha_best:.4f} | "
                      f"random-full {rand_epochs} trial-epochs, best {rand_best:.4f} | epochs ratio {ratio:.2f}, "
                      f"accuracy gap {gap:+.2f} points ({'within' if ok else 'MISSES'} {GOAL_POINTS} points)",
                      flush=True)
                worst = max(worst, ratio if ok else float("inf"))
        finally:
            ray.shutdown()
    print(f"ratio={worst:.2f} goal<={GOAL_EPOCHS:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
