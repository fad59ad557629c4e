"""`python -m analysis.predict MODEL_DIR IMAGE_OR_FOLDER...`: top-k classes for new images.

MODEL_DIR is a saved model (`model.pt` + `meta.json`), e.g. RESULTS_DIR/retrained/model or any
trial checkpoint. Images go through the same decoding as in training (`trainables.data.images.open_rgb`).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def image_files(paths: list[str]) -> list[Path]:
    from trainables.data.images import IMAGE_EXTENSIONS

    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS)
        elif p.is_file():
            found.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such image or folder")
    return found


def predict_files(model_dir: str | Path, files: list[Path], top: int = 3) -> list[list[tuple[str, float]]]:
    """For each file, the `top` (class, probability) pairs, most likely first."""
    import torch

    from trainables.data import images
    from trainables.models import inference
    from trainables.trial import checkpoint

    model, meta = checkpoint.load(model_dir)
    x = torch.stack([torch.from_numpy(np.asarray(images.open_rgb(f, meta["image_size"])).copy()).permute(2, 0, 1)
                     for f in files])
    probs = inference.predict(model, meta, x)
    values, idx = probs.topk(min(top, probs.shape[1]), dim=1)
    return [[(meta["class_names"][i], float(v)) for v, i in zip(vs, ids)] for vs, ids in zip(values, idx)]


def write_grid(files: list[Path], preds, out: Path, columns: int = 6) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    rows = (len(files) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, f, p in zip(axes.flat, files, preds):
        with Image.open(f) as im:
            ax.imshow(im.convert("RGB"))
        ax.set_title(f"{p[0][0]} {p[0][1]:.0%}\n{f.name}", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m analysis.predict", description=__doc__.splitlines()[0])
    ap.add_argument("model_dir", help="folder with model.pt and meta.json, e.g. results/finetune/retrained/model")
    ap.add_argument("images", nargs="+", help="image files or folders")
    ap.add_argument("--top", type=int, default=3, help="classes shown per image (default 3)")
    ap.add_argument("--grid", help="also write the images with their top class to this PNG")
    args = ap.parse_args(argv)
    if not (Path(args.model_dir) / "meta.json").is_file():
        print(f"error: {args.model_dir}: not a saved model (no meta.json)", file=sys.stderr)
        return 2
    try:
        files = image_files(args.images)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    preds = predict_files(args.model_dir, files, args.top)
    for f, p in zip(files, preds):
        print(f"{f}: " + ", ".join(f"{c} {v:.3f}" for c, v in p))
    if args.grid:
        write_grid(files, preds, Path(args.grid))
        print(f"grid: {args.grid}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
