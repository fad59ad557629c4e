"""The recorded table `bench/anytime.py` replays: learning curves of a discretised default space.

Every configuration of `grid()` (the default space, `spaces/finetune.yaml`, its learning rate on
a grid of three values and its batch sizes 64 and 128), with the space's constant knobs (its
`lr_schedule`, its `epochs`), is trained once with the project's own `fit`, on the embedded data
and the default split, to the space's last epoch, in this process's session. Each epoch's row
holds the configuration, the epoch, its val_acc and val_loss, and the CPU seconds the epoch took
in the training process (the first epoch includes building the model and measuring its
footprint, as a trial's does). CPU seconds, not wall seconds: a trial holds one core, trains on
one torch thread here, and CPU time on one thread grows little when the shared machine is busy,
so the table is about the same whatever else ran beside the recording.

    python bench/anytime_table.py              # records bench/anytime_table.csv (about an hour, 2 cores)
    python bench/anytime_table.py --jobs 1     # one configuration at a time

A killed recording continues where it stopped: configurations already in the CSV are skipped.
"""
from __future__ import annotations

import argparse
import csv
import itertools
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TABLE = REPO / "bench" / "anytime_table.csv"
SPACE = REPO / "spaces" / "finetune.yaml"
# The grid is a subset of the default space sized so that recording takes about an hour on 2 cores:
# its learning rates, 3e-4 to 1e-2, on a log grid that leaves out 1e-2 (the worst in a first look,
# for the pretrained net and the CNN alike), and its batch sizes 64 and 128 (32 costs twice the CPU).
LRS = (3.0e-4, 1.0e-3, 3.0e-3)
# the default space's architectures: (model, pretrained, unfreeze, cnn_width); None = the knob is not drawn
ARCHS = (("efficientnet_lite0", True, 0, None), ("efficientnet_lite0", True, 2, None),
         ("efficientnet_lite0", True, "all", None), ("efficientnet_lite0", False, None, None),
         ("cnn", None, None, 16), ("cnn", None, None, 32))
BATCH_SIZES = (64, 128)
IMAGE_SIZES = (32, 48)
KNOBS = ("model", "pretrained", "unfreeze", "cnn_width", "lr", "batch_size", "image_size")
COLUMNS = (*KNOBS, "epoch", "val_acc", "val_loss", "epoch_cpu_s")


def grid() -> list[dict]:
    """Every configuration of the discretised default space, as the sampler would draw it (a
    knob whose `when` does not hold is absent)."""
    out = []
    for (model, pretrained, unfreeze, width), lr, bs, size in itertools.product(ARCHS, LRS, BATCH_SIZES, IMAGE_SIZES):
        cfg = {"model": model, "pretrained": pretrained, "unfreeze": unfreeze, "cnn_width": width, "lr": lr,
               "batch_size": bs, "image_size": size}
        out.append({k: v for k, v in cfg.items() if v is not None})
    return out


def key(config: dict) -> tuple:
    """A configuration's row key in the table: its knobs as text (absent knobs empty)."""
    return tuple(str(config.get(k, "")) for k in KNOBS)


def read_table(path: Path = TABLE) -> dict[tuple, list[dict]]:
    """key -> its epochs' rows in order (val_acc, val_loss, epoch_cpu_s as floats)."""
    curves: dict[tuple, list[dict]] = {}
    if not path.is_file():
        return curves
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            rec = {"epoch": int(row["epoch"]), **{c: float(row[c]) for c in ("val_acc", "val_loss", "epoch_cpu_s")}}
            curves.setdefault(tuple(row[k] for k in KNOBS), []).append(rec)
    for rows in curves.values():
        rows.sort(key=lambda r: r["epoch"])
    return curves


def _context():
    """The default search's data, split and context, in a scratch folder (as `search.run` makes them)."""
    from search import space as space_mod
    from search.inputs import trial_context
    from trainables.data import dataset

    spec = space_mod.load(SPACE)
    d = spec.data
    index = dataset.prepare(d.source, d.split.model_dump(exclude={"seed"}), d.split.seed, d.limit_per_class)
    tmp = Path(tempfile.mkdtemp(prefix="anytime-table-"))
    dataset.save_split(index, tmp / "split.csv")
    return spec, trial_context(spec, index.location, index.classes, tmp / "split.csv", tmp)


def record_one(config: dict, context, epochs: int) -> list[dict]:
    """Train CONFIG with `fit` to EPOCHS epochs on one thread; its rows for the table."""
    import torch

    from trainables.trial.sessions import LocalSession
    from trainables.trial.train_loop import fit

    torch.set_num_threads(1)
    rows, last = [], [time.process_time()]

    class Recording(LocalSession):
        def report(self, row: dict, save) -> None:
            now = time.process_time()
            rows.append({**{k: config.get(k, "") for k in KNOBS}, "epoch": row["epoch"], "val_acc": row["val_acc"],
                         "val_loss": row["val_loss"], "epoch_cpu_s": round(now - last[0], 3)})
            last[0] = now

    fit({**config, "epochs": epochs, "seed": 0}, context, Recording(device="cpu"))
    return rows


def constants(spec) -> dict:
    """The space's constant knobs (`knob: value`), which every trial of the search gets."""
    return {name: knob.value for name, knob in spec.knobs.items() if knob.kind == "const"}


def _worker(job):
    config, context, epochs = job
    return record_one(config, context, epochs)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2, help="configurations trained at once (default 2: one per core)")
    ap.add_argument("--out", type=Path, default=TABLE)
    ap.add_argument("--limit", type=int, default=None, help="record only the first N missing configurations")
    args = ap.parse_args(argv)
    import multiprocessing as mp
    import random

    spec, context = _context()
    done = set(read_table(args.out)) & {key(c) for c in grid()}
    todo = [c for c in grid() if key(c) not in done]
    random.Random(0).shuffle(todo)  # a partial table is a fair sample of the grid
    todo = todo[:args.limit] if args.limit else todo
    fixed = constants(spec)
    print(f"{len(grid())} configurations, {len(done)} recorded, {len(todo)} to record, "
          f"{spec.max_epochs()} epochs each, with the space's constants {fixed}", flush=True)
    new = not args.out.is_file()
    started = time.time()
    with open(args.out, "a", newline="") as f, mp.get_context("spawn").Pool(args.jobs, maxtasksperchild=4) as pool:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            w.writeheader()
        jobs = [({**fixed, **c}, context, spec.max_epochs()) for c in todo]
        for i, rows in enumerate(pool.imap_unordered(_worker, jobs), 1):
            w.writerows(rows)
            f.flush()
            print(f"[{time.time() - started:5.0f}s] {i}/{len(todo)}: {rows[0]['model']} best val_acc "
                  f"{max(r['val_acc'] for r in rows):.4f}, {sum(r['epoch_cpu_s'] for r in rows):.0f} CPU s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
