"""Per-trial overhead of a Ray Train trial (start, report, stop) vs. the same work in-process.

Each Tune trial here is what a search trial is: `trainables.driver.fit_trainer`, which fits one
`TorchTrainer` (a Train controller, a placement group, one worker actor) on a local Ray
cluster started the way `search.run.start_ray` starts it, with `search.ray_settings` applied.
The worker's loop is trivial on purpose: a tiny MLP, a few SGD steps, and two epochs each
reported with `ray.train.report` and a small checkpoint. The same work is also timed in this
process, so that

    overhead per trial = (Tuner.fit wall time for N trials - N x in-process time) / N

is what Ray adds around a trial. ray.init is timed apart and not part of the figure.

    python bench/overhead.py              # 32 trials one at a time, then 16 two at a time
    python bench/overhead.py --quick      # 2 trials one at a time: checks it works, in under a minute
    python bench/overhead.py --baseline   # as before: Ray's defaults and the stock TorchTrainer

How it grows: one Tuner.fit of 32 trials, timed at each trial's end, gives for N = 4, 8, 16
and 32 the overhead per trial of the first N trials (N = 32: the whole Tuner.fit) and the
marginal cost of the trials since the previous N (do later trials cost more?).

Last line: `overhead_s_per_trial=<seconds per trial, one at a time, all trials> goal<=5`.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GOAL_S = 5.0
EPOCHS, STEPS = 2, 5


def work(config: dict, report) -> None:
    """The trivial training: what every trial does, wherever it runs."""
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(config["seed"])
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(64, 16), torch.randint(0, 2, (64,))
    for epoch in range(1, EPOCHS + 1):
        for _ in range(STEPS):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            acc = (model(x).argmax(1) == y).float().mean().item()
        report({"epoch": epoch, "val_loss": loss.item(), "val_acc": acc},
               lambda d: torch.save(model.state_dict(), d / "model.pt"))


def ray_loop(config: dict) -> None:
    """Runs in the Train worker: reports go through ray.train.report with a checkpoint."""
    import ray.train

    def report(row, save):
        with tempfile.TemporaryDirectory() as tmp:
            ck = None
            if ray.train.get_context().get_world_rank() == 0:
                save(Path(tmp))
                ck = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(row, checkpoint=ck)

    work(config, report)


def bench_trial(config: dict) -> None:
    """The Tune trial: the search's own TorchTrainer driver, with the trivial loop."""
    from trainables import driver

    if config.get("baseline"):  # the driver as it was: Ray's stock TorchTrainer and report callback
        from ray.train.torch import TorchTrainer
        from ray.tune.integration.ray_train import TuneReportCallback

        driver._lean_trainer_cls = lambda: TorchTrainer
        driver._tune_report_callback = TuneReportCallback
    driver.fit_trainer(ray_loop, config)


def in_process(n: int, storage: Path) -> float:
    """The same work n times in this process, checkpoints copied to storage like Train does."""
    import torch  # noqa: F401  (imported once, as a long-lived process would have it)

    def run(i):
        def report(row, save):
            with tempfile.TemporaryDirectory() as tmp:
                save(Path(tmp))
                shutil.copytree(tmp, storage / f"local-{i}" / f"checkpoint_{row['epoch']}", dirs_exist_ok=True)

        work({"seed": i}, report)

    run(-1)  # warm-up: torch's first-call costs are not a per-trial cost
    t = time.perf_counter()
    for i in range(n):
        run(i)
    return (time.perf_counter() - t) / n


def start_ray(use_settings: bool = True) -> float:
    """A local cluster as search.run.start_ray makes it, plus search.ray_settings."""
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    extra = {}
    if use_settings:
        from search import ray_settings

        ray_settings.apply_env()
        extra = ray_settings.init_kwargs()
    import ray

    from search.tuner import DRIVER_TOKEN

    t = time.perf_counter()
    ray.init(num_cpus=2, resources={DRIVER_TOKEN: 8}, dashboard_host="127.0.0.1", log_to_driver=False,
             configure_logging=True, logging_level="WARNING", **extra)
    return time.perf_counter() - t


def tune_run(n: int, concurrent: int, storage: Path, tag: str, trial=bench_trial, extra: dict | None = None,
             ends: list | None = None) -> float:
    """Wall time of Tuner.fit for n trials of `trial`, `concurrent` at a time; each trial's end
    (seconds since the start of Tuner.fit) is appended to `ends` when given."""
    import logging

    from ray import tune

    from search.tuner import DRIVER_TOKEN, trial_dirname

    class TrialEnds(tune.Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):
            if ends is not None:
                ends.append(time.perf_counter() - t)

    logging.getLogger("ray.tune.execution.tune_controller").setLevel(logging.CRITICAL)
    run = {"train_storage": str(storage / f"{tag}_train_runs"), "metric": "val_acc", "mode": "max",
           "keep_checkpoints": 2, "max_failures": 0, "workers_per_trial": 1, "cpus_per_worker": 1}
    tuner = tune.Tuner(
        tune.with_resources(trial, {DRIVER_TOKEN: 1}),
        param_space={"seed": tune.grid_search(list(range(n))), "run": run, **(extra or {})},
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrent, trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(name=tag, storage_path=str(storage), verbose=0, callbacks=[TrialEnds()],
                                  failure_config=tune.FailureConfig(max_failures=0)),
    )
    t = time.perf_counter()
    grid = tuner.fit()
    wall = time.perf_counter() - t
    bad = [r.error for r in grid if r.error is not None or (r.metrics or {}).get("epoch") != EPOCHS]
    if bad:
        raise SystemExit(f"{len(bad)} of {n} trials did not finish their {EPOCHS} epochs: {bad[0]}")
    return wall


def growth(ns: list[int], wall: float, ends: list[float], local: float) -> list[tuple]:
    """(N, elapsed at the N-th trial's end, overhead per trial of the first N, marginal per trial)."""
    ends = sorted(ends)
    rows, prev_n, prev_t = [], 0, 0.0
    for n in ns:
        t = wall if n == len(ends) else ends[n - 1]
        rows.append((n, t, t / n - local, (t - prev_t) / (n - prev_n) - local))
        prev_n, prev_t = n, t
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="2 trials, one at a time (a check that it works)")
    p.add_argument("--trials", default="4,8,16,32", help="N values; the largest is the one-at-a-time run (default 4,8,16,32)")
    p.add_argument("--concurrent-trials", type=int, default=16, help="trials of the 2-at-a-time run (0: skip it)")
    p.add_argument("--baseline", action="store_true",
                   help="as before: no search.ray_settings and Ray's stock TorchTrainer (with its Ray Data actor)")
    args = p.parse_args(argv)
    ns = [2] if args.quick else sorted({int(x) for x in args.trials.split(",")})
    runs = [(1, ns)]
    if not args.quick and args.concurrent_trials:
        runs.append((2, [n for n in ns if n < args.concurrent_trials] + [args.concurrent_trials]))

    import ray

    storage = Path(tempfile.mkdtemp(prefix="hpo-overhead-"))
    table = []
    try:
        local = in_process(3, storage)
        print(f"in-process: {local * 1000:.1f} ms per trial ({EPOCHS} epochs x {STEPS} steps, {EPOCHS} checkpoints)",
              flush=True)
        init_s = start_ray(not args.baseline)
        print(f"ray.init: {init_s:.1f} s (once per search, not counted below)"
              f"{'  [--baseline: Ray defaults, stock TorchTrainer]' if args.baseline else ''}", flush=True)
        for conc, sizes in runs:
            ends: list[float] = []
            n = sizes[-1]
            wall = tune_run(n, conc, storage, f"c{conc}", extra={"baseline": args.baseline}, ends=ends)
            print(f"{n} trials, {conc} at a time: Tuner.fit {wall:.1f} s", flush=True)
            table += [(conc, *row) for row in growth(sizes, wall, ends, local)]
        print("\n at a time |  N | elapsed s | overhead s/trial, first N | marginal s/trial since previous N")
        for conc, n, t, ovh, marg in table:
            print(f"{conc:10d} | {n:2d} | {t:9.1f} | {ovh:25.2f} | {marg:33.2f}")
    finally:
        ray.shutdown()
        shutil.rmtree(storage, ignore_errors=True)
    seq = [r for r in table if r[0] == 1][-1]
    print(f"overhead_s_per_trial={seq[3]:.2f} goal<={GOAL_S:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
