"""A messy image folder: what is skipped is listed, odd formats are converted, nothing crashes later."""
from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from trainables import data
from tests.conftest import ROOT, make_folder


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
    idx = data.prepare(str(messy), {"train": 0.7, "val": 0.15, "test": 0.15}, 0)
    summ = data.summary(idx)
    assert summ["skipped_non_images"] == ["cat/README.txt"]
    assert [u["path"] for u in summ["unreadable_images"]] == ["dog/truncated.jpg"]
    assert "truncated" in summ["unreadable_images"][0]["error"].lower()
    assert summ["duplicates"]["groups_across_classes"] == 1
    assert sorted(summ["duplicates"]["across_classes_examples"][0]) == ["cat/dup_of_dog.png", "dog/000.png"]
    assert "dog/truncated.jpg" not in {it.path for it in idx.items}
    assert summ["counts"]["train"]["fox"] + summ["counts"]["val"]["fox"] + summ["counts"]["test"]["fox"] == 14


def test_every_kept_image_decodes_to_rgb(messy):
    idx = data.prepare(str(messy), {"train": 0.7, "val": 0.15, "test": 0.15}, 0)
    x, _ = data.load_images(messy, idx.items, idx.classes, 8)
    assert x.shape == (len(idx.items), 3, 8, 8)
    assert data.open_rgb(messy / "fox" / "rgba.png", 4).getpixel((0, 0)) == (255, 255, 255)
    assert data.open_rgb(messy / "fox" / "cmyk.jpg", 4).getpixel((0, 0))[0] > 200  # CMYK red -> RGB red
    assert data.open_rgb(messy / "fox" / "gray.png", 4).getpixel((0, 0)) == (90, 90, 90)


def test_huge_jpeg_is_decoded_at_reduced_scale(tmp_path):
    Image.new("RGB", (6000, 6000), (10, 200, 30)).save(tmp_path / "huge.jpg", quality=70)
    img = data.open_rgb(tmp_path / "huge.jpg", 32)
    assert img.size == (32, 32) and img.getpixel((5, 5))[1] > 150


def test_empty_class_and_class_with_too_few_images_name_the_class(messy):
    (messy / "empty").mkdir()
    with pytest.raises(data.DataError, match=r"\['empty'\] hold no readable images"):
        data.prepare(str(messy), {"train": 0.7, "val": 0.15, "test": 0.15}, 0)
    shutil.rmtree(messy / "empty")
    for p in list((messy / "cat").glob("*.png"))[2:]:
        p.unlink()
    with pytest.raises(data.DataError, match="class 'cat' has 2 distinct image.*needs at least 3"):
        data.prepare(str(messy), {"train": 0.7, "val": 0.15, "test": 0.15}, 0)


def test_cli_prints_the_data_report(messy):
    r = subprocess.run([sys.executable, "-m", "search.run", str(ROOT / "spaces" / "smoke.yaml"), "--data", str(messy),
                        "--dry-run"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "skipped 1 non-image files: cat/README.txt" in r.stdout
    assert "skipped 1 unreadable images: dog/truncated.jpg" in r.stdout
    assert "identical images carry different labels" in r.stdout
    assert "fox" in r.stdout and "imbalance ratio" in r.stdout
