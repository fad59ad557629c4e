"""The decoded-once cache: reused when nothing changed, rebuilt when an image changed, and the
pixels a trial trains on match what a per-epoch PIL pipeline would give it."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from trainables.data import dataset, image_cache, images
from trainables.params import TrialParams
from trainables.trial.train_loop import Batches


def _jpeg_folder(root, n=6, side=96):
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            # smooth images (a gradient plus a blob), as photos are: resize filters agree on them
            yy, xx = np.mgrid[0:side, 0:side]
            base = (xx * 2 + yy + rng.integers(0, 80)) % 256
            img = np.stack([base, np.roll(base, 20 * i, 0), 255 - base], -1).astype(np.uint8)
            Image.fromarray(img).save(root / cls / f"{i}.jpg", quality=95)
    return root


def _decoded_files(cache_dir):
    return sorted((cache_dir / "decoded").glob("*.npy"))


def test_reused_when_nothing_changed_rebuilt_when_an_image_changed(tmp_path):
    root = _jpeg_folder(tmp_path / "imgs")
    index = dataset.scan(root)
    cache = tmp_path / "cache"
    x1, y1 = dataset.load_images(root, index.items, index.classes, 24, cache_dir=cache)
    [first] = _decoded_files(cache)
    stamp, inode = first.stat().st_mtime_ns, first.stat().st_ino
    x2, _ = dataset.load_images(root, index.items, index.classes, 24, cache_dir=cache)
    assert _decoded_files(cache) == [first] and first.stat().st_ino == inode  # mapped again, not rebuilt
    assert torch.equal(x1, x2) and y1.tolist() == [0] * 6 + [1] * 6

    changed = root / index.items[3].path
    Image.new("RGB", (96, 96), (255, 0, 0)).save(changed, quality=95)
    os.utime(changed, ns=(stamp + 10**9, stamp + 10**9))  # a new mtime even on coarse clocks
    x3, _ = dataset.load_images(root, index.items, index.classes, 24, cache_dir=cache)
    assert len(_decoded_files(cache)) == 2
    assert torch.equal(x3[:3], x1[:3]) and not torch.equal(x3[3], x1[3])
    assert x3[3, 0].float().mean() > 240 and x3[3, 1].float().mean() < 15  # the new red image

    dataset.load_images(root, index.items, index.classes, 32, cache_dir=cache)  # another size: its own file
    assert len(_decoded_files(cache)) == 3


def test_trained_pixels_match_the_per_epoch_pil_pipeline(tmp_path):
    from torchvision import datasets, transforms

    root = _jpeg_folder(tmp_path / "imgs")
    index = dataset.scan(root)
    x, y = dataset.load_images(root, index.items, index.classes, 32, cache_dir=tmp_path / "cache")
    batches = Batches(x, y, TrialParams(batch_size=4, image_size=32), index.classes, torch.device("cpu"))
    seen = {}
    for xb, yb in batches.epoch():  # what the train loop feeds the model (before normalising)
        for img, label in zip(xb, yb):
            seen.setdefault(int(label), []).append(img)
    pil = datasets.ImageFolder(str(root), transforms.Compose([transforms.Resize((32, 32)), transforms.PILToTensor()]))
    assert pil.classes == index.classes
    for i, (img, label) in enumerate(pil):
        ours = x[i]
        assert int(y[i]) == label
        diff = (ours.float() - img.float()).abs()
        assert diff.mean() < 4 and diff.max() < 64, f"image {i}: mean diff {diff.mean():.1f}"
        assert any(torch.equal(ours, s) for s in seen[label])  # that very image was trained on


def test_an_image_broken_after_the_scan_is_named_not_skipped(tmp_path):
    root = _jpeg_folder(tmp_path / "imgs", n=3)
    index = dataset.scan(root)
    (root / index.items[1].path).write_bytes(b"not a jpeg any more")
    with pytest.raises(images.DataError, match=r"a/1\.jpg: cannot decode image while building the cache"):
        dataset.load_images(root, index.items, index.classes, 16, cache_dir=tmp_path / "cache")
    assert not any((tmp_path / "cache" / "decoded").glob("*.npy"))  # nothing half-built left behind


def test_the_key_covers_file_list_sizes_and_image_size(tmp_path):
    root = _jpeg_folder(tmp_path / "imgs", n=3)
    paths = [it.path for it in dataset.scan(root).items]
    key = image_cache.cache_key(root, paths, 16)
    assert key == image_cache.cache_key(root, list(paths), 16)
    assert key != image_cache.cache_key(root, paths[:-1], 16)
    assert key != image_cache.cache_key(root, paths, 17)
    assert key != image_cache.cache_key(root, paths[::-1], 16)
