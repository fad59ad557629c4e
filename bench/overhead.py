"""Per-trial overhead of both trial runtimes (start, report, stop) vs. the same work in-process.

A search trial runs in one of two runtimes (trainables/trial/driver.py), and this measures both, on
one local Ray cluster started the way `search.launch.start_ray` starts it:

- `actor` (the default for single-worker trials): the trial trains in its own Tune actor,
  reporting with `ray.tune.report` and a `tune.Checkpoint` (`trainables.trial.sessions.TuneSession`),
  and Tune reuses that actor for the next trial (`reuse_actors=True`);
- `ray_train` (multi-worker trials, or `resources.use_ray_train`): `trainables.trial.driver.fit_trainer`
  fits one `TorchTrainer` per trial (a Train controller, a placement group, a worker actor).

The work is trivial on purpose: a tiny MLP, a few SGD steps, and two epochs each reported with
a small checkpoint. The same work is also timed in this process, so that

    overhead per trial = (Tuner.fit wall time for N trials - N x in-process time) / N

is what Ray adds around a trial. ray.init is timed apart and not part of the figure.

    python bench/overhead.py              # both runtimes, 32 trials one at a time
    python bench/overhead.py --quick      # 2 trials per runtime: checks it works, in about a minute
    python bench/overhead.py --concurrent-trials 16   # also 16 trials two at a time, per runtime

How it grows: one Tuner.fit of 32 trials, timed at each trial's end, gives for N = 4, 8, 16
and 32 the overhead per trial of the first N trials (N = 32: the whole Tuner.fit) and the
marginal cost of the trials since the previous N (do later trials cost more?).

Last line: `overhead_s_per_trial=<actor runtime, seconds per trial, one at a time> goal<=1`.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GOAL_S = 1.0
RUNTIMES = ("actor", "ray_train")
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
               lambda d: torch.save(model.state_dict(), Path(d) / "model.pt"))


def ray_loop(loop_config: dict) -> None:
    """Runs in the Train worker: reports as a search's trial does (`RayTrainSession`)."""
    from trainables.trial.sessions import RayTrainSession

    work(loop_config["config"], RayTrainSession().report)


def bench_trial(config: dict, context) -> None:
    """The Tune trial, in the runtime `config['runtime']` names, with the trivial loop."""
    from trainables.trial import driver

    if config["runtime"] == "actor":
        from trainables.trial.sessions import TuneSession

        driver.release_memory()
        work(config, TuneSession().report)
    else:
        driver.fit_trainer(config, context, loop=ray_loop)


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


def start_ray() -> float:
    """The local cluster of a search (`search.launch.start_ray`); seconds it took."""
    from search.launch import start_ray as start

    t = time.perf_counter()
    start(None, verbose=False)
    return time.perf_counter() - t


def context(storage: Path, tag: str):
    """The TrialContext of a search with one-CPU trials (the data fields are not read here)."""
    import dataclasses

    from search import inputs, space

    spec = space.SpaceFile.model_validate({"resources": {"cpus_per_worker": 1}})
    return dataclasses.replace(inputs.trial_context(spec, storage, ["a", "b"], storage / "split.csv", storage / tag),
                               train_storage=str(storage / f"{tag}_train_runs"))


def tune_run(n: int, concurrent: int, storage: Path, tag: str, runtime: str, ends: list | None = None) -> float:
    """Wall time of Tuner.fit for n trials in `runtime`, `concurrent` at a time; each trial's end
    (seconds since the start of Tuner.fit) is appended to `ends` when given."""
    from ray import tune

    from search.tuner import DRIVER_TOKEN, trial_dirname

    class TrialEnds(tune.Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):
            if ends is not None:
                ends.append(time.perf_counter() - t)

    actor = runtime == "actor"
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(bench_trial, context=context(storage, tag)),
                            {"CPU": 1} if actor else {DRIVER_TOKEN: 1}),
        param_space={"seed": tune.grid_search(list(range(n))), "runtime": runtime},
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrent, trial_dirname_creator=trial_dirname,
                                    reuse_actors=actor),
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
    p.add_argument("--quick", action="store_true", help="2 trials per runtime, one at a time (a check that it works)")
    p.add_argument("--trials", default="4,8,16,32",
                   help="N values; the largest is the one-at-a-time run (default 4,8,16,32)")
    p.add_argument("--concurrent-trials", type=int, default=0, help="trials of a 2-at-a-time run per runtime (0: none)")
    p.add_argument("--runtimes", default=",".join(RUNTIMES), help=f"which to measure (default: {','.join(RUNTIMES)})")
    args = p.parse_args(argv)
    ns = [2] if args.quick else sorted({int(x) for x in args.trials.split(",")})
    runs = [(1, ns)]
    if not args.quick and args.concurrent_trials:
        runs.append((2, [n for n in ns if n < args.concurrent_trials] + [args.concurrent_trials]))
    runtimes = [r for r in RUNTIMES if r in args.runtimes.split(",")]

    import ray

    storage = Path(tempfile.mkdtemp(prefix="hpo-overhead-"))
    table = []
    try:
        local = in_process(3, storage)
        print(f"in-process: {local * 1000:.1f} ms per trial ({EPOCHS} epochs x {STEPS} steps, {EPOCHS} checkpoints)",
              flush=True)
        print(f"ray.init: {start_ray():.1f} s (once per search, not counted below)", flush=True)
        for runtime in runtimes:
            for conc, sizes in runs:
                ends: list[float] = []
                n = sizes[-1]
                wall = tune_run(n, conc, storage, f"{runtime}_c{conc}", runtime, ends=ends)
                print(f"{runtime}: {n} trials, {conc} at a time: Tuner.fit {wall:.1f} s", flush=True)
                table += [(runtime, conc, *row) for row in growth(sizes, wall, ends, local)]
        print("\n runtime   | at a time |  N | elapsed s | overhead s/trial, first N "
              "| marginal s/trial since previous N")
        for runtime, conc, n, t, ovh, marg in table:
            print(f" {runtime:<9} | {conc:9d} | {n:2d} | {t:9.1f} | {ovh:25.2f} | {marg:33.2f}")
    finally:
        ray.shutdown()
        shutil.rmtree(storage, ignore_errors=True)
    for runtime in runtimes[::-1]:  # the default runtime's figure last: the line to read
        seq = [r for r in table if r[0] == runtime and r[1] == 1][-1]
        print(f"{'overhead_s_per_trial' if runtime == 'actor' else 'ray_train_overhead_s_per_trial'}="
              f"{seq[4]:.2f}" + (f" goal<={GOAL_S:g}" if runtime == "actor" else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
