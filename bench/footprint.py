"""What measuring a trial's model costs the trial: `trainables.models.footprint` against a one-epoch trial.

Each trial measures its model once, before its first epoch (parameters, weights size, and the
median of 20 batch-1 forward passes on one CPU thread, after 3 warm-up ones); later trials of
the same architecture in the search read the figures (`footprint.measure_once`). This bench
takes the costly case: every trial here measures into a new, empty footprint folder (a cold
footprint cache, as the first trial of an architecture), and the trial is one epoch long, as
most trials are under the default ASHA (`grace_period: 1` stops most after their first epoch).
The images are decoded into the image cache before the first trial, as `search.run` does
before any trial, so a trial's time is what a search's trial spends: build the model, measure
it, map the cache, train one epoch, evaluate.

It trains, in this process with the search's own `fit` on one torch thread (a search's
`cpus_per_worker: 1`), the default space's two kinds of trial on the embedded images: a
pretrained EfficientNet-Lite0 and the small CNN, at the space's largest image size. Each round
runs both, the order alternating from round to round; printed: per round, then each kind's
median share (`footprint_s / trial time`) and spread. Ray adds its own start-up to a search's
trial, so the share there is smaller still.

The goal (set before the full run): the larger kind's median share at most 2 %. Why: the
figures serve users who deploy to a phone or a CPU; the others must not pay for them in search
time, and 2 % of a search is below the run-to-run spread of a search's wall time on one
machine. The last line is `ratio=<the larger median share> goal<=0.02`.

    python bench/footprint.py            # 200 images a class (1,400 train), 48 px, 5 rounds
    python bench/footprint.py --quick    # 30 images a class, 3 rounds: that it works
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GOAL = 0.02
TRIALS = {
    "efficientnet_lite0, pretrained": {"model": "efficientnet_lite0", "pretrained": True, "unfreeze": "all",
                                       "lr": 0.002, "batch_size": 64},
    "cnn, width 32": {"model": "cnn", "cnn_width": 32, "lr": 0.003, "batch_size": 64},
}


def one_trial(knobs: dict, context, footprints: Path) -> tuple[float, dict]:
    """A one-epoch trial measuring into the empty folder FOOTPRINTS: its seconds and last report."""
    from trainables.trial import sessions, train_loop

    context = dataclasses.replace(context, footprint_dir=str(footprints))
    session = sessions.LocalSession(device="cpu")
    started = time.perf_counter()
    train_loop.fit({**knobs, "epochs": 1}, context, session)
    return time.perf_counter() - started, session.history[-1]


def decode(context, image_size: int) -> None:
    """The train and val images into the image cache, before any trial (as search.inputs.warm_cache)."""
    from trainables.data import dataset

    for split in ("train", "val"):
        items = dataset.read_split(context.split_file, (split,))
        dataset.load_images(context.data_root, items, list(context.class_names), image_size, context.cache_dir)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="30 images a class, 3 rounds: that it works")
    ap.add_argument("--per-class", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--image-size", type=int, default=48)
    args = ap.parse_args(argv)
    per_class, rounds = (30, 3) if args.quick else (args.per_class, args.rounds)

    import torch

    from search import inputs, space
    from trainables.data import dataset

    torch.set_num_threads(1)  # a search's trial: cpus_per_worker 1
    shares: dict[str, list[float]] = {name: [] for name in TRIALS}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        index = dataset.prepare("animal-mnist", {"train": 0.7, "val": 0.15, "test": 0.15}, 0, per_class)
        dataset.save_split(index, tmp / "split.csv")
        context = inputs.trial_context(space.SpaceFile(), index.root, index.classes, tmp / "split.csv", tmp)
        decode(context, args.image_size)
        print(f"{sum(index.counts()['train'].values())} train images, one epoch at {args.image_size} px, one torch "
              f"thread, a cold footprint cache each trial; {rounds} rounds", flush=True)
        names = list(TRIALS)
        for r in range(rounds):
            for name in (names if r % 2 == 0 else names[::-1]):
                trial_s, last = one_trial({**TRIALS[name], "image_size": args.image_size}, context,
                                          tmp / f"footprints-{r}-{names.index(name)}")
                shares[name].append(last["footprint_s"] / trial_s)
                print(f"round {r + 1}, {name}: trial {trial_s:.1f} s, measuring {last['footprint_s']:.2f} s "
                      f"({100 * shares[name][-1]:.2f} %): {last['params_m']:.2f} M parameters, "
                      f"{last['model_mb']:.1f} MB, {last['latency_ms']:.2f} ms per image", flush=True)
    for name, v in shares.items():
        print(f"{name}: median share {100 * statistics.median(v):.2f} % (spread {100 * min(v):.2f}-"
              f"{100 * max(v):.2f} %)")
    print(f"ratio={max(statistics.median(v) for v in shares.values()):.4f} goal<={GOAL:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
