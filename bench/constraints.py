"""Does TPE learn where the feasible region is? Feasible trials among its first and later trials.

For each seed, a real search (`search.run`: Ray Tune, TPE + ASHA) of spaces/deploy.yaml on the
embedded images: the pretrained EfficientNet-Lite0 or a small CNN of 8 to 128 filters, under
`max_latency_ms: 5`, below the latency of Lite0 at 48 px (about 10 ms on one CPU thread here).
A configuration over the limit is not trained and is told to Optuna as infeasible. In the
order the sampler asked for them, it counts the feasible trials among the first
`startup_trials` (random: TPE has not started) and among the rest (TPE's). It also checks that
every trial the leaderboard calls feasible meets the limit. The last line is
`ratio=<feasible share of TPE's trials / of the random first ones, over all seeds> goal>1`.

    python bench/constraints.py            # 3 seeds × 24 trials
    python bench/constraints.py --quick    # 1 seed, 6 trials: that it works
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


def search(tmp: Path, seed: int, trials: int, startup: int) -> tuple[list[bool], float, bool]:
    """Run spaces/deploy.yaml once; return whether each trial was feasible (in the sampler's order),
    the limit, and whether every trial the leaderboard calls feasible is within it."""
    from search import results_folder, run
    from search import study as study_mod

    args = [str(REPO / "spaces" / "deploy.yaml"), "--storage", str(tmp), "--name", f"s{seed}",
            "--set", f"search.seed={seed}", "--set", f"search.num_samples={trials}",
            "--set", f"search.startup_trials={startup}"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert run.main(args) in (0, 1)  # 1: every configuration over the limit (a --quick draw can be)
    results = tmp / f"s{seed}"
    record = results_folder.read_record(results)
    limit = record.limits["latency_ms"]
    table = results_folder.trials_table(results)
    honest = bool((table.loc[table["feasible"], "latency_ms"] <= limit).all())
    study = study_mod.load(results, record.name)
    order = sorted(study.trials, key=lambda t: t.number)
    return [bool(t.constraints) and all(v <= 0 for v in t.constraints.values()) for t in order], limit, honest


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--startup", type=int, default=6, help="random trials before TPE (search.startup_trials)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--quick", action="store_true", help="1 seed, 6 trials: that it works")
    args = ap.parse_args(argv)
    if args.quick:
        args.trials, args.startup, args.seeds = 6, 3, [0]
    first = later = first_n = later_n = 0
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as tmp:
            feasible, limit, honest = search(Path(tmp), seed, args.trials, args.startup)
        head, tail = feasible[:args.startup], feasible[args.startup:]
        first, later, first_n, later_n = first + sum(head), later + sum(tail), first_n + len(head), later_n + len(tail)
        print(f"seed {seed}: feasible (latency_ms <= {limit:g}) among the first {len(head)} (random) "
              f"{sum(head)}, among TPE's {len(tail)} {sum(tail)}; in trial order: "
              + "".join("+" if f else "." for f in feasible)
              + ("" if honest else "; A TRIAL CALLED FEASIBLE IS OVER THE LIMIT"), flush=True)
    share_first, share_later = first / max(1, first_n), later / max(1, later_n)
    print(f"feasible share over seeds {args.seeds}: first {args.startup} trials {share_first:.2f} "
          f"({first}/{first_n}), TPE's {share_later:.2f} ({later}/{later_n})")
    print(f"ratio={share_later / share_first if share_first else float('inf'):.2f} goal>1")
    return 0


if __name__ == "__main__":
    sys.exit(main())
