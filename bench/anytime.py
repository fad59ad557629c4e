"""The judge: best val accuracy reached against time, at equal compute, over many seeds, against baselines.

Each arm searches the discretised default space (`bench/anytime_table.py`: its grid and the
recorded learning curves) through Ray Tune itself: a trial looks its configuration up in the
table and reports the recorded epochs, sleeping each epoch's recorded CPU seconds divided by
COMPRESSION. The searchers, schedulers, the time budget and the concurrency (2 trials at once,
as on a 2-core machine) run for real; only the training is replayed. Time below is simulated
time: real seconds × COMPRESSION. Ray's own costs (starting a trial, a report) are real and so
count COMPRESSION times over; every arm pays them, the arms with the most trials most.

Arms, all at 2 trials at once, each run with a seed:
- `default`: the project's own search (`search.tuner.searcher`: seeded TPE, define-by-run,
  `points_to_evaluate` of the space; ASHA as the space says; the time budget, `search.budget`),
  run once per budget, since it plans by its budget;
- `default-start`: the same without the space's `points_to_evaluate` (its known-good first
  trial, which the other arms do not get): what the search does on its own;
- `default+mv`: the same with TPE's `multivariate`, `group` and `constant_liar` (a candidate);
- `random+fifo`: random search, every trial to the last epoch;
- `tpe+fifo`: the project's TPE, every trial to the last epoch;
- `ray-recipe`: Ray's documented recipe, `OptunaSearch` and `ASHAScheduler()` with their defaults;
- `optuna+sha`: Optuna alone (no Ray): TPE with `SuccessiveHalvingPruner`, 2 threads;
- `top-k`: the one-epoch top-K rule: random configurations one epoch each for half the budget,
  then the best K=2 trained on to the last epoch (run once per budget).
The arms that do not plan by the budget run once for the largest and are read at each budget.

A run's regret at a budget is the best val in the whole table minus the best val the run had
reported by that (simulated) time. Printed: the median and interquartile range per arm and
budget, and `bench/anytime.png` (median regret against time). The goal, set before the first
run: the default's median regret at most half the best baseline's at the middle budget, and
no worse than any baseline at any budget. The last line is `ratio=<default's median regret /
the best baseline's median regret at the middle budget> goal<=0.5` (baselines: random+fifo,
tpe+fifo, ray-recipe, optuna+sha, top-k).

    python bench/anytime.py                  # 20 seeds, budgets of 2, 5 and 15 minutes
    python bench/anytime.py --quick          # 2 seeds, 2 budgets, faster replay: checks that it runs
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ray import tune  # noqa: E402

from bench.anytime_table import LRS, constants, key, read_table  # noqa: E402

GOAL = 0.5
CONCURRENT = 2
TOP_K = 2
BASELINES = ("random+fifo", "tpe+fifo", "ray-recipe", "optuna+sha", "top-k")
ARMS = ("default", "default-start", "default+mv", *BASELINES)
PLANS_BY_BUDGET = ("default", "default-start", "default+mv", "top-k")


def replay_space(folder: Path):
    """The default space with its learning rate on the table's grid, as a SpaceFile."""
    import yaml

    from bench.anytime_table import BATCH_SIZES, SPACE
    from search import space as space_mod

    raw = yaml.safe_load(SPACE.read_text())
    raw["space"]["lr"] = {"choice": list(LRS)}
    raw["space"]["batch_size"] = {"choice": list(BATCH_SIZES)}
    raw["search"]["points_to_evaluate"] = [_on_grid(p) for p in raw["search"].get("points_to_evaluate", [])]
    path = folder / "replay.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return space_mod.load(path)


def _on_grid(point: dict) -> dict:
    """A point of the space moved to the table's grid (its lr and batch size to the nearest)."""
    import math

    from bench.anytime_table import BATCH_SIZES

    out = dict(point)
    if "lr" in out:
        out["lr"] = min(LRS, key=lambda v: abs(math.log(v / out["lr"])))
    if "batch_size" in out:
        out["batch_size"] = min(BATCH_SIZES, key=lambda v: abs(math.log(v / out["batch_size"])))
    return out


def replay_trial(config: dict, table: dict, compression: float, from_epoch: int = 1) -> None:
    """A Tune trial that reports CONFIG's recorded epochs, each after its recorded time / COMPRESSION."""
    from ray import tune

    rows = table[key(config.get("cfg", config))]  # "cfg": the top-K rule's second phase, a grid of configs
    for row in rows[from_epoch - 1:]:
        time.sleep(row["epoch_cpu_s"] / compression)
        tune.report({"epoch": row["epoch"], "epoch_of": len(rows), "val_acc": row["val_acc"],
                     "val_loss": row["val_loss"]})


def _replayed(table: dict, compression: float, from_epoch: int = 1):
    """The replayed trial as Tune runs it: one CPU, the table through `tune.with_parameters`."""
    return tune.with_resources(tune.with_parameters(replay_trial, table=table, compression=compression,
                                                    from_epoch=from_epoch), {"CPU": 1})


class Arrivals:
    """(simulated seconds since the start, val_acc) of every report, in order. The clock starts
    when the first trial starts (`begin`): the seconds Ray takes to start a search's first
    actors, COMPRESSION times over, would otherwise be most of a short budget; the Tune arms
    pay them alike, Optuna alone starts no actors."""

    def __init__(self, compression: float, budget_s: float, on_begin=None):
        self.compression, self.budget_s, self.on_begin = compression, budget_s, on_begin
        self.t0: float | None = None
        self.points: list[tuple[float, float]] = []

    def begin(self) -> None:
        if self.t0 is None:
            self.t0 = time.time()
            if self.on_begin:
                self.on_begin()

    def add(self, value: float) -> None:  # list.append is atomic: Optuna's threads may call it at once
        self.points.append(((time.time() - self.t0) * self.compression, float(value)))

    def over(self) -> bool:
        """Whether the budget has passed (in real seconds: budget / compression)."""
        return self.t0 is not None and time.time() - self.t0 >= self.budget_s / self.compression


class Record(tune.Callback):
    """Starts the clock at the first trial's start and keeps every report's arrival."""

    def __init__(self, arrivals: Arrivals):
        self.arrivals = arrivals

    def on_trial_start(self, iteration, trials, trial, **info):
        self.arrivals.begin()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.arrivals.add(result["val_acc"])


class Deadline(tune.Stopper):
    """Stops the whole run when the budget has passed; with EPOCH, each trial at that epoch too."""

    def __init__(self, arrivals: Arrivals, epoch: int | None = None):
        self.arrivals, self.epoch = arrivals, epoch

    def __call__(self, trial_id, result):
        return self.epoch is not None and result.get("epoch", 0) >= self.epoch

    def stop_all(self):
        return self.arrivals.over()


def _tune_run(table, compression, seed, arm, budget_s, storage, searcher, scheduler, stop_epoch=None,
              param_space=None, from_epoch=1) -> Arrivals:
    """A baseline's Tune run over the replayed table, for BUDGET_S simulated seconds."""
    arrivals = Arrivals(compression, budget_s)
    trial = _replayed(table, compression, from_epoch)
    tuner = tune.Tuner(
        trial, param_space=param_space,
        tune_config=tune.TuneConfig(metric="val_acc", mode="max", search_alg=searcher, scheduler=scheduler,
                                    num_samples=1 if param_space else -1, max_concurrent_trials=CONCURRENT,
                                    reuse_actors=True),
        run_config=tune.RunConfig(name=f"{arm}-{seed}-{int(budget_s)}", storage_path=str(storage), verbose=0,
                                  callbacks=[Record(arrivals)], stop=Deadline(arrivals, stop_epoch)))
    tuner.fit()
    return arrivals


def run_default(spec, table, compression, seed, budget_s, storage, multivariate=False, first_points=True) -> list:
    """The project's own search, its Tuner built by search.tuner.build, the trials replayed;
    FIRST_POINTS False leaves out the space's points_to_evaluate."""
    import optuna

    from search import budget
    from search import tuner as tuner_mod

    update = {"seed": seed, "time": budget_s, **({} if first_points else {"points_to_evaluate": []})}
    spec = spec.model_copy(update={"search": spec.search.model_copy(update=update)})
    sampler = None
    if multivariate:
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=tuner_mod.UNCAPPED_STARTUP,
                                             multivariate=True, group=True, constant_liar=True)
    searcher = tuner_mod.searcher(spec, f"anytime-{seed}", None, sampler=sampler)
    # the budget's clock starts with the first trial, and keeps back nothing: no results to write
    arrivals = Arrivals(compression, budget_s, on_begin=lambda: budget.start(budget_s / compression
                                                                            + budget.WRAP_UP_S))
    budget.start(None)
    trial = _replayed(table, compression)
    tuner = tuner_mod.build(spec, None, searcher, str(storage), f"default-{seed}-{int(budget_s)}-{multivariate}",
                            CONCURRENT, callbacks=[Record(arrivals)], trial=trial)
    tuner.fit()
    return arrivals.points


def run_baseline(arm, spec, table, compression, seed, budget_s, storage) -> list:
    import optuna
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.optuna import OptunaSearch

    from search import tuner as tuner_mod
    from search.searcher import EpochOptunaSearch

    space = tuner_mod.yaml_space(spec)
    if arm == "ray-recipe":  # as Ray's docs show it: OptunaSearch (its default TPE) and ASHAScheduler()
        return _tune_run(table, compression, seed, arm, budget_s, storage,
                         OptunaSearch(space, metric="val_acc", mode="max", seed=seed), ASHAScheduler()).points
    sampler = (optuna.samplers.RandomSampler(seed=seed) if arm == "random+fifo" else
               optuna.samplers.TPESampler(seed=seed, n_startup_trials=tuner_mod.UNCAPPED_STARTUP))
    searcher = EpochOptunaSearch(space, metric="val_acc", mode="max", sampler=sampler)
    return _tune_run(table, compression, seed, arm, budget_s, storage, searcher, FIFOScheduler()).points


def run_optuna_sha(spec, table, compression, seed, budget_s) -> list:
    """Optuna alone: TPE and SuccessiveHalvingPruner, CONCURRENT threads, for the budget."""
    import optuna

    from search import tuner as tuner_mod

    space = tuner_mod.yaml_space(spec)
    arrivals = Arrivals(compression, budget_s)

    def objective(trial):
        fixed = space(trial)  # the define-by-run space returns its constants; the sampled values are params
        rows = table[key({**fixed, **trial.params})]
        for row in rows:
            time.sleep(row["epoch_cpu_s"] / compression)
            arrivals.add(row["val_acc"])
            trial.report(row["val_acc"], row["epoch"])
            if trial.should_prune():
                raise optuna.TrialPruned()
        return max(r["val_acc"] for r in rows)

    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.SuccessiveHalvingPruner(),
                                sampler=optuna.samplers.TPESampler(seed=seed,
                                                                   n_startup_trials=tuner_mod.UNCAPPED_STARTUP))
    arrivals.begin()
    study.optimize(objective, n_jobs=CONCURRENT, timeout=budget_s / compression)
    return arrivals.points


def run_top_k(spec, table, compression, seed, budget_s, storage) -> list:
    """Random configurations for one epoch each for half the budget, then the best TOP_K trained on."""
    import optuna
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    from search import tuner as tuner_mod
    from search.searcher import EpochOptunaSearch

    space = tuner_mod.yaml_space(spec)
    searcher = EpochOptunaSearch(space, metric="val_acc", mode="max", sampler=optuna.samplers.RandomSampler(seed=seed))
    first = _tune_run(table, compression, seed, "top-k-1", budget_s / 2, storage, searcher, FIFOScheduler(),
                      stop_epoch=1)
    trials = [t for t in searcher._ot_study.trials if 1 in t.intermediate_values]
    best = sorted(trials, key=lambda t: -t.intermediate_values[1])[:TOP_K]
    configs = [{**constants(spec), **t.params} for t in best]
    if not configs:  # not one epoch in half the budget
        return first.points
    second = _tune_run(table, compression, seed, "top-k-2", budget_s / 2, storage, None, FIFOScheduler(),
                       param_space={"cfg": tune.grid_search(configs)}, from_epoch=2)
    half = budget_s / 2
    return first.points + [(t + half, v) for t, v in second.points]


def regret(points: list, at: float, best_in_table: float) -> float:
    """The table's best minus the best val reported by simulated time AT (the table's best minus
    nothing, i.e. its best, when nothing came yet)."""
    seen = [v for t, v in points if t <= at]
    return best_in_table - (max(seen) if seen else 0.0)


def run_job(job: tuple) -> tuple:
    """One (arm, seed, budget) run in this driver process; returns it with its reports' arrivals.
    Run from the module `bench.anytime`, not `__main__`, so that Ray's workers can unpickle the
    replayed trial by its module's name."""
    from bench import anytime

    return anytime._run_job(job)


def _run_job(job: tuple) -> tuple:
    arm, seed, budget_s, compression, table_path = job
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    table = _TABLE.setdefault(str(table_path), read_table(Path(table_path)))
    with tempfile.TemporaryDirectory() as tmp:
        spec = replay_space(Path(tmp))
        if arm.startswith("default"):
            points = run_default(spec, table, compression, seed, budget_s, Path(tmp), multivariate=arm == "default+mv",
                                 first_points=arm != "default-start")
        elif arm == "optuna+sha":
            points = run_optuna_sha(spec, table, compression, seed, budget_s)
        elif arm == "top-k":
            points = run_top_k(spec, table, compression, seed, budget_s, Path(tmp))
        else:
            points = run_baseline(arm, spec, table, compression, seed, budget_s, Path(tmp))
    return job[:3], points


_TABLE: dict = {}


def _join(address: str) -> None:
    """A driver process joins the bench's Ray cluster."""
    import atexit

    import ray

    ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    atexit.register(ray.shutdown)


def jobs_for(arms, seeds, budgets, compression, table_path) -> list[tuple]:
    """Every run: the arms that plan by their budget once per budget, the others once, for the largest."""
    out = []
    for seed in seeds:
        for arm in arms:
            for b in (budgets if arm in PLANS_BY_BUDGET else [max(budgets)]):
                out.append((arm, seed, b, compression, str(table_path)))
    return out


def regrets(runs: dict, arm: str, budget_s: float, best: float) -> list[float]:
    """Each seed's regret of ARM at BUDGET_S: from its run for that budget, or its one run read at it."""
    got = []
    for (a, seed, b), points in runs.items():
        if a == arm and (b == budget_s or (arm not in PLANS_BY_BUDGET and b >= budget_s)):
            got.append(regret(points, budget_s, best))
    return got


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else [values[0]] * 3
    return q[0], statistics.median(values), q[2]


def summary(runs: dict, arms, budgets, best: float) -> dict:
    """Print the median and IQR of each arm's regret at each budget; return {arm: [median per budget]}."""
    medians = {}
    print(f"regret = best val_acc in the table ({best:.4f}) minus the best a run had found; median [IQR] over seeds")
    print(f"{'arm':12s}" + "".join(f"{f'{b / 60:g} min':>24s}" for b in budgets))
    for arm in arms:
        cells, medians[arm] = [], []
        for b in budgets:
            q1, med, q3 = quartiles(regrets(runs, arm, b, best))
            medians[arm].append(med)
            cells.append(f"{med:.4f} [{q1:.4f}-{q3:.4f}]")
        print(f"{arm:12s}" + "".join(f"{c:>24s}" for c in cells))
    return medians


def plot(runs: dict, arms, budgets, best: float, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for arm in arms:
        if arm in PLANS_BY_BUDGET:
            xs = [b / 60 for b in budgets]
            ys = [statistics.median(regrets(runs, arm, b, best)) for b in budgets]
            ax.plot(xs, ys, marker="o", lw=2.6 if arm == "default" else 1.4, ls="--" if arm == "default+mv" else "-",
                    zorder=3 if arm == "default+mv" else 2, label=f"{arm} (a run per budget)")
        else:
            grid = [max(budgets) * i / 60 for i in range(1, 61)]
            ys = [statistics.median(regrets(runs, arm, t, best)) for t in grid]
            ax.plot([t / 60 for t in grid], ys, lw=1.2, label=arm)
    ax.set_xlabel("simulated minutes on 2 cores (2 trials at once)")
    ax.set_ylabel("median regret in val accuracy")
    ax.set_yscale("symlog", linthresh=0.01)
    ax.set_title("bench/anytime.py: best val found against time, discretised default space")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 seeds, budgets of 2 and 5 minutes, compression 60")
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--budgets", type=float, nargs="+", default=[2, 5, 15], help="minutes (default 2 5 15)")
    ap.add_argument("--compression", type=float, default=20, help="simulated seconds per real second")
    ap.add_argument("--jobs", type=int, default=4, help="driver processes at once (each runs whole searches)")
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    ap.add_argument("--table", type=Path, default=REPO / "bench" / "anytime_table.csv")
    ap.add_argument("--png", type=Path, default=REPO / "bench" / "anytime.png")
    ap.add_argument("--save", type=Path, help="also write every run's reports (time, val) to this JSON file")
    ap.add_argument("--merge", type=Path, nargs="*", default=[], help="runs saved (--save) by earlier invocations "
                    "with the same table, budgets and compression, summarised with this one's")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.budgets, args.compression = 2, [2, 5], 60
    budgets = [b * 60 for b in args.budgets]
    table = read_table(args.table)
    from bench.anytime_table import grid

    missing = [c for c in grid() if key(c) not in table]
    if missing:
        print(f"error: {args.table} lacks {len(missing)} of the grid's {len(grid())} configurations; record them "
              "with python bench/anytime_table.py", file=sys.stderr)
        return 2
    best = max(max(r["val_acc"] for r in table[key(c)]) for c in grid())
    import multiprocessing as mp
    import os

    import ray

    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])  # Ray's workers
    ctx = ray.init(num_cpus=CONCURRENT * args.jobs, include_dashboard=False, log_to_driver=False,
                   logging_level="ERROR")
    jobs = jobs_for(args.arms, range(args.seeds), budgets, args.compression, args.table)
    print(f"{len(jobs)} searches, {args.jobs} at a time, replayed {args.compression:g}x faster; arms "
          f"{', '.join(args.arms)}; budgets {', '.join(f'{b:g}' for b in args.budgets)} min; {args.seeds} seeds",
          flush=True)
    runs, started = {}, time.time()
    try:
        pool = mp.get_context("spawn").Pool(args.jobs, initializer=_join, initargs=(ctx.address_info["address"],))
        for i, (name, points) in enumerate(pool.imap_unordered(run_job, jobs), 1):
            runs[name] = points
            if i % 10 == 0 or i == len(jobs):
                print(f"[{time.time() - started:5.0f}s] {i}/{len(jobs)} searches", flush=True)
        pool.close()  # the drivers leave Ray themselves (atexit), not killed in the middle of it
        pool.join()
    finally:
        ray.shutdown()
    for path in args.merge:
        for arm, seed, b, points in json.loads(path.read_text()):
            runs[(arm, seed, b)] = [tuple(p) for p in points]
    arms = [a for a in ARMS if any(name[0] == a for name in runs)]
    empty = [name for name, points in runs.items() if not points]
    if empty:
        print(f"error: {len(empty)} searches reported nothing, e.g. {empty[0]}; their trials failed",
              file=sys.stderr)
        return 1
    if args.save:
        args.save.write_text(json.dumps([[*k, v] for k, v in runs.items()]))
    medians = summary(runs, arms, budgets, best)
    plot(runs, arms, budgets, best, args.png)
    print(f"curves: {args.png}")
    mid = len(budgets) // 2
    base = [a for a in arms if a in BASELINES]
    if "default" not in medians or not base:
        return 0
    best_base = min(medians[a][mid] for a in base)
    worse = [f"{a} at {budgets[i] / 60:g} min" for a in base for i in range(len(budgets))
             if medians["default"][i] > medians[a][i]]
    print("default no worse than every baseline at every budget: " + ("yes" if not worse else
                                                                       "no, behind " + ", ".join(worse)))
    ratio = medians["default"][mid] / best_base if best_base > 0 else (0.0 if medians["default"][mid] == 0
                                                                        else float("inf"))
    print(f"ratio={ratio:.2f} goal<={GOAL}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
