"""Live confirmation of bench/anytime.py: the default search against Ray's documented recipe, trained for real.

At one budget and 3 seeds, interleaved (default, recipe, default, recipe, ...), on the embedded
data with the default space (`spaces/finetune.yaml`), each arm gets the same wall-clock from its
own command's start, data preparation and Ray's start included:
- `default`: `python -m search.run spaces/finetune.yaml --time BUDGET --set search.seed=S`;
- `recipe`: the same space, data, split and trial function (`search.tuner.trainable`), but the
  searcher and scheduler as Ray's docs show them: `OptunaSearch(space, metric, mode, seed=S)`
  and `ASHAScheduler()` with its defaults, `num_samples=-1` and Tune's own `time_budget_s`
  set to what is left of BUDGET when the Tuner starts.
Each prints the best val accuracy it reached. The goal, written before it ran: the default's
median best is no lower than the recipe's. The last line is `ratio=<default's median regret /
recipe's median regret>`, regret taken against the best val of bench/anytime_table.csv, `goal<=1`.

    python bench/anytime_live.py                 # 3 seeds x 2 arms at 5 minutes: about 30 minutes
    python bench/anytime_live.py --quick         # 1 seed, 1 minute each, on 50 images a class
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SPACE = REPO / "spaces" / "finetune.yaml"


def run_default(seed: int, budget_s: float, tmp: Path, extra: list[str]) -> float:
    out = subprocess.run([sys.executable, "-m", "search.run", str(SPACE), "--time", f"{budget_s:g}s",
                          "--storage", str(tmp), "--name", f"default-{seed}", "--set", f"search.seed={seed}", *extra],
                         cwd=REPO, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"the default search failed: {out.stderr[-2000:]}")
    import pandas as pd

    return float(pd.read_csv(tmp / f"default-{seed}" / "trials.csv")["best_val_acc"].max())


def run_recipe(seed: int, budget_s: float, tmp: Path, extra: list[str]) -> float:
    """Ray's recipe in a process of its own, timed like the default from that process's start."""
    out = subprocess.run([sys.executable, __file__, "--recipe-child", str(seed), str(budget_s), str(tmp), *extra],
                         cwd=REPO, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"the recipe search failed: {out.stderr[-2000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def recipe_child(seed: int, budget_s: float, tmp: Path, extra: list[str]) -> float:
    started = time.time()
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from search import space as space_mod
    from search import tuner as tuner_mod
    from search.inputs import trial_context, warm_cache
    from search.launch import start_ray
    from trainables.data import dataset

    spec = space_mod.load(SPACE, extra[1::2])  # EXTRA: --set KEY=VALUE pairs
    tmp.mkdir(parents=True, exist_ok=True)
    d = spec.data
    index = dataset.prepare(d.source, d.split.model_dump(exclude={"seed"}), d.split.seed, d.limit_per_class)
    dataset.save_split(index, tmp / "split.csv")
    context = trial_context(spec, index.location, index.classes, tmp / "split.csv", tmp)
    start_ray(None, verbose=False)
    warm_cache(spec, context)
    searcher = OptunaSearch(tuner_mod.yaml_space(spec), metric="val_acc",
                            mode="max", seed=seed)
    tuner = tune.Tuner(
        tuner_mod.trainable(context),
        tune_config=tune.TuneConfig(metric="val_acc", mode="max", search_alg=searcher, scheduler=ASHAScheduler(),
                                    num_samples=-1, max_concurrent_trials=2, reuse_actors=True,
                                    time_budget_s=max(1.0, budget_s - (time.time() - started))),
        run_config=tune.RunConfig(name=f"recipe-{seed}", storage_path=str(tmp), verbose=0))
    grid = tuner.fit()
    best = max(r.metrics_dataframe["val_acc"].max() for r in grid if r.metrics_dataframe is not None
               and "val_acc" in r.metrics_dataframe)
    ray.shutdown()
    return float(best)


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--recipe-child":
        seed, budget_s, tmp = int(sys.argv[2]), float(sys.argv[3]), Path(sys.argv[4])
        print(recipe_child(seed, budget_s, tmp, sys.argv[5:]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 seed, 1 minute, 50 images a class")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--minutes", type=float, default=5)
    args = ap.parse_args(argv)
    seeds, budget_s = (1, 60) if args.quick else (args.seeds, args.minutes * 60)
    extra = ["--set", "data.limit_per_class=50"] if args.quick else []
    from bench.anytime_table import grid, key, read_table

    table = read_table()
    best_in_table = max((max(r["val_acc"] for r in table[key(c)]) for c in grid() if key(c) in table), default=1.0)
    got: dict[str, list[float]] = {"default": [], "recipe": []}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(seeds):
            for arm, run in (("default", run_default), ("recipe", run_recipe)):
                t0 = time.time()
                got[arm].append(run(seed, budget_s, Path(tmp) / f"{arm}-{seed}", extra))
                print(f"seed {seed} {arm}: best val_acc {got[arm][-1]:.4f} in {time.time() - t0:.0f}s of wall time",
                      flush=True)
    med = {arm: statistics.median(v) for arm, v in got.items()}
    print(json.dumps({"budget_s": budget_s, "best_val_acc": got, "median": med}))
    regret = {arm: max(0.0, best_in_table - m) for arm, m in med.items()}
    ratio = regret["default"] / regret["recipe"] if regret["recipe"] > 0 else (1.0 if regret["default"] == 0
                                                                              else float("inf"))
    print(f"ratio={ratio:.2f} goal<=1")
    return 0


if __name__ == "__main__":
    sys.exit(main())
