"""What measuring a trial's model costs the trial: `trainables.footprint` against the trial's time.

Each trial measures its model once, before its first epoch (parameters, weights size, and the
median of 20 batch-1 forward passes on one CPU thread, after 3 warm-up ones; later trials of the
same architecture in the search reuse it; this bench's context measures into a new folder). The issue's bar:
at most 2 % of a trial's time. This trains, in this process with the search's own `fit`, the
default space's two kinds of trial on the embedded images (a pretrained EfficientNet-Lite0 and
the small CNN, at the space's largest image size and 3 epochs), and divides each trial's
`footprint_s` by its training time. In a search, Ray adds its own start-up to each trial, so the
share there is smaller still. The last line is `ratio=<the larger share> goal<=0.02`.

    python bench/footprint.py            # 200 images a class (1,400 train), 3 epochs, 48 px
    python bench/footprint.py --quick    # 30 images a class, 1 epoch
"""
from __future__ import annotations

import argparse
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="30 images a class, 1 epoch: that it works")
    ap.add_argument("--per-class", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--image-size", type=int, default=48)
    args = ap.parse_args(argv)
    per_class, epochs = (30, 1) if args.quick else (args.per_class, args.epochs)

    import torch

    from search import run, space
    from trainables import data, sessions, train_loop

    torch.set_num_threads(1)  # a search's trial: cpus_per_worker 1
    shares = []
    with tempfile.TemporaryDirectory() as tmp:
        index = data.prepare("animal-mnist", {"train": 0.7, "val": 0.15, "test": 0.15}, 0, per_class)
        data.save_split(index, Path(tmp) / "split.csv")
        context = run.trial_context(space.SpaceFile(), index.root, index.classes, Path(tmp) / "split.csv", Path(tmp))
        print(f"{sum(index.counts()['train'].values())} train images, {epochs} epoch(s) at {args.image_size} px, "
              "one torch thread", flush=True)
        for name, knobs in TRIALS.items():
            session = sessions.LocalSession(device="cpu")
            started = time.perf_counter()
            train_loop.fit({**knobs, "image_size": args.image_size, "epochs": epochs}, context, session)
            trial_s = time.perf_counter() - started
            last = session.history[-1]
            shares.append(last["footprint_s"] / trial_s)
            print(f"{name}: trial {trial_s:.1f} s, measuring {last['footprint_s']:.2f} s ({100 * shares[-1]:.2f} %): "
                  f"{last['params_m']:.2f} M parameters, {last['model_mb']:.1f} MB, {last['latency_ms']:.2f} ms "
                  "per image on one CPU thread", flush=True)
    print(f"ratio={max(shares):.4f} goal<={GOAL:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
