"""Data: folders scanned, the split stratified, seeded, disjoint, duplicates kept together, saved."""
from __future__ import annotations

import shutil
from collections import Counter

import pytest

from tests.conftest import make_folder
from trainables.data import dataset, images

FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}


def split_of(root, seed=0, limit=None):
    return dataset.prepare(str(root), FRACTIONS, seed, limit)


def test_split_is_stratified_disjoint_and_complete(folder):
    idx = split_of(folder)
    counts = idx.counts()
    for cls in "abc":
        assert (counts["train"][cls], counts["val"][cls], counts["test"][cls]) == (14, 3, 3)
    assert len({it.path for it in idx.items}) == len(idx.items) == 60


def test_split_is_seeded(folder):
    a = {it.path: it.split for it in split_of(folder, seed=1).items}
    assert a == {it.path: it.split for it in split_of(folder, seed=1).items}
    assert a != {it.path: it.split for it in split_of(folder, seed=2).items}


def test_duplicates_stay_in_one_split(folder):
    for i in range(8):  # copies of a few images under new names, same class
        shutil.copy(folder / "a" / f"{i:03d}.png", folder / "a" / f"copy{i}.png")
    idx = split_of(folder)
    where: dict[str, set] = {}
    for it in idx.items:
        where.setdefault(it.sha1, set()).add(it.split)
    assert all(len(s) == 1 for s in where.values())
    rep = dataset.duplicate_report(idx)
    assert rep["duplicate_groups"] == 8 and rep["groups_across_splits"] == 0


def test_split_is_saved_and_read_back_without_test(folder, tmp_path):
    idx = split_of(folder)
    dataset.save_split(idx, tmp_path / "split.csv")
    rows = dataset.read_split(tmp_path / "split.csv", ("train", "val"))
    assert len(rows) == 51 and not any(r.split == "test" for r in rows)
    assert Counter(r.split for r in dataset.read_split(tmp_path / "split.csv", ("test",))) == {"test": 9}


def test_limit_per_class(folder):
    idx = split_of(folder, limit=10)
    assert Counter(it.label for it in idx.items) == {"a": 10, "b": 10, "c": 10}


def test_presplit_folder_keeps_its_split_and_checks_class_names(tmp_path):
    for s in dataset.SPLITS:
        make_folder(tmp_path / "pre" / s, {"x": 4, "y": 4}, seed=hash(s) % 100)
    idx = split_of(tmp_path / "pre")
    assert idx.presplit and idx.counts()["val"] == {"x": 4, "y": 4}
    make_folder(tmp_path / "pre" / "test", {"z": 2})
    with pytest.raises(images.DataError, match=r"not in all three: \['z'\]"):
        split_of(tmp_path / "pre")


def test_bad_folders_say_which_class(tmp_path):
    make_folder(tmp_path / "f", {"a": 5, "b": 2})
    with pytest.raises(images.DataError, match="class 'b' has 2 distinct image"):
        split_of(tmp_path / "f")
    (tmp_path / "f" / "empty").mkdir()
    with pytest.raises(images.DataError, match=r"\[.empty.\] hold no readable images"):
        split_of(tmp_path / "f")


def test_non_images_are_skipped_and_listed(folder):
    (folder / "a" / "notes.txt").write_text("hello")
    idx = split_of(folder)
    assert idx.skipped == ["a/notes.txt"] and len(idx.items) == 60


def test_embedded_set_is_a_real_image_folder(animal_root):
    idx = dataset.scan(animal_root)
    assert idx.classes == ["bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"]
    assert Counter(it.label for it in idx.items) == {c: 1000 for c in idx.classes}
    x, y = dataset.load_images(animal_root, idx.items[:3], idx.classes, 20)
    assert x.shape == (3, 3, 20, 20) and x.dtype.is_floating_point is False and int(x.max()) > 0
