"""The final model against the search's own best checkpoint, on a small imbalanced folder.

For each seed: a real search (`search.run`, Ray Tune, TPE + ASHA) on a folder of real embedded
images, five classes of 150, 110, 80, 60 and 40 (split and sampler seeded alike), then
`analysis.retrain` three ways, each tested on the same held-out split:
- checkpoint: the best trial's own best checkpoint (trained on train, chosen on val);
- refit: its configuration retrained on train+val, the trial's LR path replayed to its best epoch;
- ensemble (the default): the checkpoint and four refits, class probabilities averaged.

The goal: the default final model is never worse than the checkpoint by more than 1 point.
The last line is the worst seed's `ratio=<ensemble acc / (checkpoint acc - 0.01)> goal>=1`.
(The bench looks at every policy's test accuracy to compare them; the product never does:
the policy is fixed before its one test.)

    python bench/final_model.py            # 5 seeds: about 4 minutes here
    python bench/final_model.py --refits 2 # the ensemble with two refits
    python bench/final_model.py --quick    # one seed, 3 short trials: that it works
    python bench/final_model.py --seeds 0  # one seed
"""
from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

COUNTS = {"bear": 150, "bird": 110, "cat": 80, "cow": 60, "dog": 40}
POLICIES = ("checkpoint", "refit", "ensemble")
GOAL_POINTS = 1.0

SPACE = """
name: final-bench
search:
  num_samples: {trials}
  max_concurrent_trials: 2
  seed: {seed}
  scheduler: {{max_t: {epochs}, grace_period: 1, reduction_factor: 2}}
data: {{split: {{seed: {seed}}}}}
space:
  model: cnn
  image_size: 32
  epochs: {epochs}
  lr: {{float: [1.0e-4, 3.0e-2], log: true}}
  batch_size: {{choice: [16, 32]}}
  cnn_width: {{choice: [16, 32]}}
  dropout: {{float: [0.0, 0.4]}}
  lr_schedule: {{choice: [constant, cosine]}}
"""


def imbalanced_folder(root: Path) -> Path:
    """COUNTS real images per class, copied from the embedded Animal-MNIST folder."""
    from trainables import data

    source = data.resolve_source("animal-mnist")
    for cls, n in COUNTS.items():
        (root / cls).mkdir(parents=True)
        for f in sorted((source / cls).glob("*.png"))[:n]:
            shutil.copy(f, root / cls / f.name)
    return root


def one_seed(seed: int, folder: Path, tmp: Path, refits: int, quick: bool) -> dict[str, float]:
    """Search, then each policy's test accuracy."""
    from analysis import retrain
    from search import run

    space = tmp / f"space-{seed}.yaml"
    space.write_text(SPACE.format(seed=seed, trials=3 if quick else 10, epochs=2 if quick else 6))
    with contextlib.redirect_stdout(io.StringIO()):
        assert run.main([str(space), "--data", str(folder), "--storage", str(tmp / "res"), "--name", f"s{seed}"]) == 0
        return {p: retrain.retrain(tmp / "res" / f"s{seed}", out=tmp / "res" / f"s{seed}" / p, policy=p,
                                   refits=refits)["test_acc"] for p in POLICIES}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--quick", action="store_true", help="1 seed, 3 trials of 2 epochs, 1 refit: that it works")
    ap.add_argument("--refits", type=int, default=4, help="refits in the ensemble (analysis.retrain's default: 4)")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.refits = args.seeds[:1], 1
    print(f"{sum(COUNTS.values())} images, {len(COUNTS)} classes {list(COUNTS.values())}; 10 trials of a small "
          f"CNN at 32 px, up to 6 epochs, per seed; seeds {args.seeds}", flush=True)
    worst, accs = float("inf"), {p: [] for p in POLICIES}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = imbalanced_folder(tmp / "imgs")
        for seed in args.seeds:
            acc = one_seed(seed, folder, tmp, args.refits, args.quick)
            for p in POLICIES:
                accs[p].append(acc[p])
            margin = 100 * (acc["ensemble"] - acc["checkpoint"])
            print(f"seed {seed}: test acc checkpoint {acc['checkpoint']:.4f} | refit {acc['refit']:.4f} | "
                  f"ensemble (default) {acc['ensemble']:.4f}: {margin:+.1f} points against the checkpoint", flush=True)
            worst = min(worst, acc["ensemble"] / max(1e-9, acc["checkpoint"] - GOAL_POINTS / 100))
    print("mean over seeds: " + ", ".join(f"{p} {sum(v) / len(v):.4f}" for p, v in accs.items()))
    print(f"ratio={worst:.3f} goal>=1")
    return 0


if __name__ == "__main__":
    sys.exit(main())
