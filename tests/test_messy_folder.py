"""A messy image folder: what is skipped is listed, odd formats are converted, nothing crashes later."""
from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ROOT, make_folder
from trainables.data import dataset, images


@pytest.fixture
def messy(tmp_path):
    root = make_folder(tmp_path / "messy", {"cat": 10, "dog": 10, "fox": 10})
    (root / "cat" / "README.txt").write_text("not an image")
    good = (root / "dog" / "000.png").read_bytes()
    Image.fromarray(np.full((40, 40, 3), 200, np.uint8)).save(root / "dog" / "big.jpg", quality=95)
    (root / "dog" / "truncated.jpg").write_bytes((root / "dog" / "big.jpg").read_bytes()[:400])
    rgba = np.zeros((12, 12, 4), np.uint8)
    rgba[..., 0] = 255  # pure red, fully transparent: must come out white, not red or black
    Image.fromarray(rgba, "RGBA").save(root / "fox" / "rgba.png")
    Image.new("CMYK", (12, 12), (0, 255, 255, 0)).save(root / "fox" / "cmyk.jpg")
    Image.new("P", (12, 12), 3).save(root / "fox" / "palette.png")
    Image.new("L", (12, 12), 90).save(root / "fox" / "gray.png")
    (root / "cat" / "dup_of_dog.png").write_bytes(good)  # the same picture under two labels
    return root


def test_data_report_lists_what_was_skipped(messy):
    idx = dataset.prepare(str(messy), {"train": 0.7, "val": 0.15, "test": 0.15}, 0)
    summ = dataset.summary(idx)
    assert summ["skipped_non_images"] == ["cat/README.txt"]
    assert [u["path"] for u in summ["unreadable_images"]] == ["dog/truncated.jpg"]
    assert "truncated" in summ["unreadable_images"][0]["error"].lower()
    conflicts = summ["conflicting_labels"]  # dropped by default: which label is right is unknowable
    assert conflicts["groups"] == 1 and conflicts["dropped"] and summ["duplicates"]["groups_across_classes"] == 0
    assert sorted((g["path"], g["label"]) for g in conflicts["examples"][0]) == [
        ("cat/dup_of_dog.png", "cat"), ("dog/000.png", "dog")]
    kept = {it.path for it in idx.items}
    assert "dog/truncated.jpg" not in kept and not kept & {"cat/dup_of_dog.png", "dog/000.png"}
    assert summ["counts"]["train"]["fox"] + summ["counts"]["val"]["fox"] + summ["counts"]["test"]["fox"] == 14


def test_every_kept_image_decodes_to_rgb(messy):
    idx = dataset.prepare(str(messy), {"train": 0.7, "val": 0.15, "test": 0.15}, 0)
    x, _ = dataset.load_images(messy, idx.items, idx.classes, 8)
    assert x.shape == (len(idx.items), 3, 8, 8)
    assert images.open_rgb(messy / "fox" / "rgba.png", 4).getpixel((0, 0)) == (255, 255, 255)
    assert images.open_rgb(messy / "fox" / "cmyk.jpg", 4).getpixel((0, 0))[0] > 200  # CMYK red -> RGB red
    assert images.open_rgb(messy / "fox" / "gray.png", 4).getpixel((0, 0)) == (90, 90, 90)


def test_huge_jpeg_is_decoded_at_reduced_scale(tmp_path):
    Image.new("RGB", (6000, 6000), (10, 200, 30)).save(tmp_path / "huge.jpg", quality=70)
    img = images.open_rgb(tmp_path / "huge.jpg", 32)
    assert img.size == (32, 32) and img.getpixel((5, 5))[1] > 150


def test_empty_class_and_class_with_too_few_images_name_the_class(messy):
    (messy / "empty").mkdir()
    with pytest.raises(images.DataError, match=r"\['empty'\] hold no readable images"):
        dataset.prepare(str(messy), {"train": 0.7, "val": 0.15, "test": 0.15}, 0)
    shutil.rmtree(messy / "empty")
    for p in list((messy / "cat").glob("*.png"))[2:]:
        p.unlink()
    with pytest.raises(images.DataError, match="class 'cat' has 2 distinct image.*needs at least 3"):
        dataset.prepare(str(messy), {"train": 0.7, "val": 0.15, "test": 0.15}, 0)


def test_cli_prints_the_data_report(messy):
    r = subprocess.run([sys.executable, "-m", "search.run", str(ROOT / "spaces" / "smoke.yaml"), "--data", str(messy),
                        "--dry-run"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "skipped 1 non-image files: cat/README.txt" in r.stdout
    assert "skipped 1 unreadable images: dog/truncated.jpg" in r.stdout
    assert "2 identical images in 1 groups carry different labels, dropped" in r.stdout
    assert "cat/dup_of_dog.png (cat) = dog/000.png (dog)" in r.stdout
    assert "fox" in r.stdout and "imbalance ratio" in r.stdout


def _same_images_under_two_classes(root):
    """Six identical PNGs in both a/ and b/ (as scraped sets hold them), beside distinct images."""
    make_folder(root, {"a": 12, "b": 12, "c": 12})
    for i in range(6):
        pic = Image.fromarray(np.full((12, 12, 3), 10 * i, np.uint8))
        pic.save(root / "a" / f"same_{i}.png")
        pic.save(root / "b" / f"copy_{i}.png")
    return root


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["drop", "keep"])
@pytest.mark.parametrize("seed", range(10))
def test_identical_images_under_two_classes_stay_in_one_split(tmp_path, seed, mode):
    root = _same_images_under_two_classes(tmp_path / "imgs")
    idx = dataset.prepare(str(root), {"train": 0.7, "val": 0.15, "test": 0.15}, seed, conflicting_labels=mode)
    assert len(idx.conflicting) == 6
    splits = {}
    for it in idx.items:
        splits.setdefault(it.sha1, set()).add(it.split)
    assert all(len(s) == 1 for s in splits.values())  # no group in two splits
    same = [it for it in idx.items if "same_" in it.path or "copy_" in it.path]
    assert len(same) == (0 if mode == "drop" else 12)


@pytest.mark.timeout(120)
def test_cli_dry_run_names_the_conflicting_groups(tmp_path):
    root = _same_images_under_two_classes(tmp_path / "imgs")
    r = subprocess.run([sys.executable, "-m", "search.run", str(ROOT / "spaces" / "smoke.yaml"), "--data", str(root),
                        "--dry-run"], cwd=ROOT, capture_output=True, text=True, timeout=100)
    assert r.returncode == 0, r.stderr
    assert "12 identical images in 6 groups carry different labels, dropped" in r.stdout
    assert "a/same_0.png (a) = b/copy_0.png (b)" in r.stdout
