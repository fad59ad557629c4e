"""One epoch of the decoded-once cache vs. the per-epoch PIL `ImageFolder` pipeline, side by side.

The embedded Animal-MNIST set is written out as 128 px RGB JPEGs (what a user's photo folder
looks like after a first resize), then both pipelines produce the same normalised float
batches of `--image-size` pixels from it, with no model attached:

- PIL: `torchvision.datasets.ImageFolder` + Resize + PILToTensor in a DataLoader, decoding
  every JPEG every epoch, as hand-written fine-tuning scripts do;
- cached: this project's `trainables.data.dataset.load_images` (memory-mapped uint8 cache, decoded
  once) and the train loop's own `Batches` iterator.

Each side runs `--epochs` epochs after one warm-up epoch; the cache's one-off build time is
printed separately. Last line: `ratio=<PIL s per epoch / cached s per epoch> goal>=3`.

    python bench/data.py            # 10 000 images
    python bench/data.py --quick    # 1 000 images, a few seconds
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

GOAL = 3.0


def write_jpegs(dest: Path, per_class: int | None, side: int = 128) -> Path:
    from PIL import Image

    with np.load(Path(__file__).resolve().parents[1] / "trainables/assets/animal_mnist.npz", allow_pickle=False) as z:
        images, labels, names = z["images"], z["labels"], [str(n) for n in z["class_names"]]
    seen = {n: 0 for n in names}
    for img, lab in zip(images, labels):
        name = names[lab]
        if per_class and seen[name] >= per_class:
            continue
        (dest / name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).convert("RGB").resize((side, side), Image.Resampling.BICUBIC).save(
            dest / name / f"{seen[name]:05d}.jpg", quality=90)
        seen[name] += 1
    return dest


def pil_epoch(root: Path, size: int, batch_size: int, workers: int) -> float:
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.Resize((size, size)), transforms.PILToTensor()])
    loader = torch.utils.data.DataLoader(datasets.ImageFolder(str(root), tf), batch_size=batch_size, shuffle=True,
                                         num_workers=workers)
    started = time.perf_counter()
    for xb, _ in loader:
        _normalise(xb)
    return time.perf_counter() - started


def cached_epoch(batches) -> float:
    started = time.perf_counter()
    for xb, _ in batches.epoch():
        _normalise(xb)
    return time.perf_counter() - started


def _normalise(xb: torch.Tensor) -> torch.Tensor:
    """The train loop's own normalisation, the same on both sides."""
    from trainables.models.preprocess import normalize

    return normalize(xb, {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="100 images per class, 1 timed epoch per side")
    ap.add_argument("--image-size", type=int, default=128, help="training input side (default 128)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers of the PIL side (default 0; the "
                    "cached side decodes nothing per epoch)")
    ap.add_argument("--epochs", type=int, default=None, help="timed epochs per side (default 3, quick 1)")
    args = ap.parse_args(argv)
    epochs = args.epochs or (1 if args.quick else 3)
    torch.set_num_threads(1)

    from trainables.data import dataset
    from trainables.params import TrialParams
    from trainables.trial.train_loop import Batches

    with tempfile.TemporaryDirectory() as tmp:
        root = write_jpegs(Path(tmp) / "jpegs", 100 if args.quick else None)
        index = dataset.scan(root)
        classes = index.classes
        print(f"data: {len(index.items)} JPEGs of 128 px in {len(classes)} classes; batches of {args.batch_size} "
              f"at {args.image_size} px; {epochs} timed epoch(s) per side after one warm-up", flush=True)
        started = time.perf_counter()
        x, y = dataset.load_images(root, index.items, classes, args.image_size, cache_dir=Path(tmp) / "cache")
        build = time.perf_counter() - started
        started = time.perf_counter()
        x, y = dataset.load_images(root, index.items, classes, args.image_size, cache_dir=Path(tmp) / "cache")
        reopen = time.perf_counter() - started
        batches = Batches(x, y, TrialParams(batch_size=args.batch_size, image_size=args.image_size), classes,
                          torch.device("cpu"))
        pil_epoch(root, args.image_size, args.batch_size, args.workers)
        cached_epoch(batches)
        pil = float(np.median([pil_epoch(root, args.image_size, args.batch_size, args.workers) for _ in range(epochs)]))
        cached = float(np.median([cached_epoch(batches) for _ in range(epochs)]))
    n = len(index.items)
    print(f"cache build (once per data set and size): {build:.2f} s; reopening it: {reopen * 1000:.0f} ms")
    print(f"PIL ImageFolder, decoded every epoch: {pil:.3f} s/epoch ({n / pil:,.0f} images/s)")
    print(f"decoded-once cache:                   {cached:.3f} s/epoch ({n / cached:,.0f} images/s)")
    print(f"the cache pays for itself after {build / max(1e-9, pil - cached):.1f} epoch(s)")
    print(f"ratio={pil / cached:.1f} goal>={GOAL:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
