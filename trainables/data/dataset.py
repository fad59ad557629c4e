"""Image folders in, a saved split and decoded tensors out.

Every data source, the embedded Animal-MNIST included, goes through the same path: a folder
of class subfolders (or one already split into train/ val/ test/), scanned once, split once
per search (stratified, seeded, duplicates kept inside one split), and saved as `split.csv`
so that every trial, and the retrain, reads the very same files.
"""
from __future__ import annotations

import csv
import hashlib
import io
import os
import shutil
import tempfile
import warnings
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trainables.data import cache_budget, image_cache, remote_images
from trainables.data.folder_walk import Walk, walk_classes
from trainables.data.images import IMAGE_EXTENSIONS, DataError
from trainables.storage import remote

SPLITS = ("train", "val", "test")
EMBEDDED = {"animal-mnist"}
_ASSETS = Path(__file__).resolve().parents[1] / "assets"


def default_cache_dir() -> Path:
    base = os.environ.get("HPO_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "hpo-finetune"
    )
    return Path(base)


def resolve_source(source: str, cache_dir: str | Path | None = None) -> Path:
    """Return an absolute image folder for `source`: a path, or the name of an embedded set."""
    if source in EMBEDDED:
        return materialize_animal_mnist(Path(cache_dir) if cache_dir else default_cache_dir())
    root = Path(source).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"data folder {source!r} does not exist (give an image folder or one of {sorted(EMBEDDED)})")
    return root


def materialize_animal_mnist(cache_dir: Path) -> Path:
    """Write the embedded arrays out once as PNG files, so they load like any user's folder.

    The arrays ship as a compressed `.npz` (converted once from the `animal-mnist` wheel's
    pickles; loaded here with allow_pickle=False). Written to a temporary folder then renamed,
    so a crash halfway never leaves a partial data set that later runs would trust: the folder
    exists only once it is whole.
    """
    from PIL import Image

    root = cache_dir / "animal-mnist-v1"
    if root.is_dir():
        return root
    cache_dir.mkdir(parents=True, exist_ok=True)
    with np.load(_ASSETS / "animal_mnist.npz", allow_pickle=False) as z:
        images, labels, names = z["images"], z["labels"], [str(n) for n in z["class_names"]]
    tmp = Path(tempfile.mkdtemp(prefix=".animal-mnist-", dir=cache_dir))
    for name in names:
        (tmp / name).mkdir()
    for i, (img, lab) in enumerate(zip(images, labels)):
        Image.fromarray(img, mode="L").save(tmp / names[lab] / f"{i:05d}.png")
    try:
        tmp.rename(root)
    except OSError:  # another process won the race; theirs is complete too
        shutil.rmtree(tmp, ignore_errors=True)
    return root


@dataclass
class Item:
    path: str  # relative to the data root, '/'-separated
    label: str
    split: str | None = None
    sha1: str = ""


@dataclass
class DataIndex:
    root: Path
    classes: list[str]
    items: list[Item]
    presplit: bool
    skipped: list[str] = field(default_factory=list)  # non-image files, relative paths
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (relative path, why): hidden, links, ...
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (relative path, why)
    # groups of byte-identical images filed under different classes: [[(path, label), ...], ...]
    conflicting: list[list[tuple[str, str]]] = field(default_factory=list)
    conflicting_dropped: bool = False
    # how every node names the images when root is this node's own copy of them: a bucket's
    # prefix, or the embedded set's name (each node writes it out from the installed package)
    source: str | None = None

    @property
    def location(self) -> str:
        """Where every node finds the images: the bucket's prefix, the embedded set, or the folder."""
        return self.source or str(self.root)

    def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {s: {c: 0 for c in self.classes} for s in SPLITS}
        for it in self.items:
            if it.split:
                out[it.split][it.label] += 1
        return out


def _case_clashes(index_classes: list[str], root: Path) -> None:
    by_lower: dict[str, list[str]] = defaultdict(list)
    for c in index_classes:
        by_lower[c.casefold()].append(c)
    clash = [names for names in by_lower.values() if len(names) > 1]
    if clash:
        raise DataError(f"{root}: class folders {' and '.join(repr(n) for n in clash[0])} differ only in case; "
                        "merge them into one folder, or rename one if they are different classes")


def scan(root: Path) -> DataIndex:
    """Index a folder of class subfolders, or a folder holding train/ val/ test/ class folders."""
    walk = Walk()
    if all((root / s).is_dir() for s in SPLITS):
        per_split = {s: walk_classes(root / s, root, IMAGE_EXTENSIONS, Walk()) for s in SPLITS}
        for w in per_split.values():
            walk.other += w.other
            walk.ignored += w.ignored
        names = {s: set(per_split[s].classes) for s in SPLITS}
        if not names["train"] == names["val"] == names["test"]:
            diff = sorted((names["train"] | names["val"] | names["test"])
                          - (names["train"] & names["val"] & names["test"]))
            raise DataError(f"{root}: train/ val/ test/ must hold the same class folders; "
                            f"these are not in all three: {diff}")
        classes = sorted(names["train"])
        items = [Item(p, c, s) for s in SPLITS for c in classes for p in per_split[s].classes[c]]
        presplit = True
    else:
        walk_classes(root, root, IMAGE_EXTENSIONS, walk)
        classes = sorted(walk.classes)
        items = [Item(p, c) for c in classes for p in walk.classes[c]]
        presplit = False
    _case_clashes(classes, root)
    index = DataIndex(root, classes, items, presplit, walk.other, ignored=walk.ignored)
    _verify_and_hash(index)
    if len(classes) < 2:
        raise DataError(f"{root}: found {len(classes)} class folder(s) {classes}; "
                        "need at least 2 (one subfolder of images per class)")
    _check_classes_not_empty(index)
    return index


def _check_classes_not_empty(index: DataIndex) -> None:
    counts = Counter(i.label for i in index.items)
    empty = [c for c in index.classes if counts[c] == 0]
    if empty:
        why = f"; {len(index.unreadable)} unreadable image(s) were skipped" if index.unreadable else ""
        if index.conflicting_dropped:
            why += (f"; {sum(len(g) for g in index.conflicting)} images whose identical copies carry other labels "
                    "were dropped (data.conflicting_labels: keep keeps them)")
        raise DataError(f"{index.location}: class folder(s) {empty} hold no readable images "
                        f"({', '.join(sorted(IMAGE_EXTENSIONS))}){why}")


def _check_one(path: Path) -> tuple[str, str | None]:
    """Hash the file and decode it fully (at reduced scale where the format allows): (sha1, error)."""
    from PIL import Image

    try:
        raw = path.read_bytes()
    except OSError as e:
        return "", f"cannot read the file ({e.strerror})"
    digest = hashlib.sha1(raw).hexdigest()
    if not raw:
        return digest, "empty file (0 bytes)"
    try:
        with Image.open(io.BytesIO(raw)) as im:
            im.draft("RGB", (64, 64))  # JPEG decodes at 1/2..1/8 scale: cheap even for huge photos
            im.load()
    except Image.DecompressionBombError as e:
        return digest, f"too large to decode safely ({e}); shrink it or remove it"
    except Exception as e:  # PIL raises many types for bad files; all mean "cannot use this image"
        return digest, f"{type(e).__name__}: {e}"
    return digest, None


def _verify_and_hash(index: DataIndex) -> None:
    """Drop (and list) images that do not decode, so no trial ever meets one mid-epoch."""
    from PIL import Image

    # images between PIL's two limits decode (with a warning per image); above them, they are listed
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
        checked = list(pool.map(lambda it: _check_one(index.root / it.path), index.items))
    good = []
    for it, (digest, err) in zip(index.items, checked):
        it.sha1 = digest
        if err:
            index.unreadable.append((it.path, err))
        else:
            good.append(it)
    index.items = good


def limit_per_class(index: DataIndex, limit: int | None, seed: int) -> None:
    """Keep a seeded random `limit` images per class (per split for a pre-split folder)."""
    if not limit:
        return
    rng = np.random.default_rng(seed)
    groups: dict[tuple, list[Item]] = defaultdict(list)
    for it in index.items:
        groups[(it.split, it.label)].append(it)
    kept = []
    for key in sorted(groups, key=str):
        g = groups[key]
        idx = sorted(rng.permutation(len(g))[:limit])
        kept += [g[i] for i in idx]
    index.items = kept


CONFLICTING_LABELS = ("drop", "keep")


def resolve_conflicting_labels(index: DataIndex, mode: str = "drop") -> None:
    """Find byte-identical images filed under different classes, list them, and drop them
    (`drop`: the true label is unknowable) or keep every copy with its own label (`keep`)."""
    if mode not in CONFLICTING_LABELS:
        raise DataError(f"data.conflicting_labels: {mode!r} is not allowed; allowed: {', '.join(CONFLICTING_LABELS)}")
    groups: dict[str, list[Item]] = defaultdict(list)
    for it in index.items:
        groups[it.sha1].append(it)
    bad = {h for h, g in groups.items() if len({it.label for it in g}) > 1}
    index.conflicting = [[(it.path, it.label) for it in groups[h]]
                         for h in sorted(bad, key=lambda h: groups[h][0].path)]
    index.conflicting_dropped = mode == "drop" and bool(bad)
    if index.conflicting_dropped:
        index.items = [it for it in index.items if it.sha1 not in bad]


def _home_class(group: list[Item]) -> str:
    """The class a group of identical images is stratified under: its most common label."""
    counts = Counter(it.label for it in group)
    return min(counts, key=lambda c: (-counts[c], c))


def split(index: DataIndex, fractions: dict[str, float], seed: int) -> None:
    """Assign each image to train/val/test: stratified by class, seeded, duplicates kept together.

    Images with identical bytes form one group that lands in a single split, whatever their
    labels, so that no copy of a test image is ever trained on. A pre-split folder keeps its
    own assignment.
    """
    if index.presplit:
        return
    rng = np.random.default_rng(seed)
    by_hash: dict[str, list[Item]] = defaultdict(list)
    for it in index.items:
        by_hash[it.sha1].append(it)
    by_class: dict[str, list[list[Item]]] = defaultdict(list)
    for group in by_hash.values():
        by_class[_home_class(group)].append(group)
    for cls in index.classes:
        groups = by_class[cls]
        n = sum(len(g) for g in groups)
        if len(groups) < len(SPLITS):
            raise DataError(
                f"{index.location}: class {cls!r} has {len(groups)} distinct image(s); the stratified split needs "
                f"at least {len(SPLITS)} (one per train/val/test)"
            )
        want = {s: max(1, round(n * fractions[s])) for s in ("val", "test")}
        order = rng.permutation(len(groups))
        filled = {"val": 0, "test": 0}
        for gi in order:
            g = groups[gi]
            target = next((s for s in ("test", "val") if filled[s] < want[s]), "train")
            if target != "train":
                filled[target] += len(g)
            for it in g:
                it.split = target
    _check_no_leak(index)


def _check_no_leak(index: DataIndex) -> None:
    where: dict[str, set[str]] = defaultdict(set)
    for it in index.items:
        where[it.sha1].add(it.split)
    leaks = [h for h, s in where.items() if len(s) > 1]
    if leaks and not index.presplit:  # cannot happen by construction; guard against regressions
        raise AssertionError(f"{len(leaks)} duplicate image(s) span several splits")


def conflicts_report(index: DataIndex) -> dict:
    """The groups of identical images with different labels, for data.json and the console."""
    return {"groups": len(index.conflicting), "images": sum(len(g) for g in index.conflicting),
            "dropped": index.conflicting_dropped,
            "examples": [[{"path": p, "label": c} for p, c in g] for g in index.conflicting[:50]]}


def duplicate_report(index: DataIndex) -> dict[str, int]:
    """How many images are byte-identical copies, and how many copies cross split borders."""
    groups: dict[str, list[Item]] = defaultdict(list)
    for it in index.items:
        groups[it.sha1].append(it)
    dup = [g for g in groups.values() if len(g) > 1]
    return {
        "duplicate_groups": len(dup),
        "duplicate_images": sum(len(g) for g in dup),
        "groups_across_splits": sum(1 for g in dup if len({i.split for i in g}) > 1),
        "groups_across_classes": sum(1 for g in dup if len({i.label for i in g}) > 1),
        "across_classes_examples": [[i.path for i in g] for g in dup if len({i.label for i in g}) > 1][:10],
    }


def save_split(index: DataIndex, path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split", "sha1"])
        for it in index.items:
            w.writerow([it.path, it.label, it.split, it.sha1])


def read_split(path: str | Path, splits: tuple[str, ...]) -> list[Item]:
    """Rows of a saved split restricted to `splits` (a search trial asks for train and val only);
    PATH may be in a bucket (a search whose results are there)."""
    text = (remote.read_bytes(str(path)) if remote.is_uri(path) else Path(path).read_bytes()).decode()
    rows = csv.DictReader(io.StringIO(text, newline=""))
    return [Item(r["path"], r["label"], r["split"], r["sha1"]) for r in rows if r["split"] in splits]


def image_folder(root: str | Path, cache_dir: str | Path | None = None) -> Path:
    """The folder this node reads ROOT's images from: ROOT, its copy of a bucket's prefix, or the
    embedded set written out in its cache."""
    if remote.is_uri(root):
        return remote_images.local_root(str(root), cache_dir or default_cache_dir())
    if str(root) in EMBEDDED:
        return resolve_source(str(root), cache_dir)
    return Path(root)


def load_images(root: str | Path, items: list[Item], classes: list[str], image_size: int,
                cache_dir: str | Path | None = None, stream=None, cache_max_gb: float | None = None):
    """The images of `items` as uint8 N×3×S×S (memory-mapped from the decoded-once cache), and labels.

    The first call for a file list and size decodes the images (see `trainables.data.image_cache`);
    every later trial, epoch and search maps the same file. ROOT may be a bucket's prefix: the
    images are then first copied into this node's cache (`trainables.data.remote_images.fetch`).
    """
    import torch

    lookup = {c: i for i, c in enumerate(classes)}
    cache_dir = cache_dir or default_cache_dir()
    try:
        if remote.is_uri(root):
            root = remote_images.fetch(str(root), items, cache_dir, stream=stream)
        elif str(root) in EMBEDDED:
            root = resolve_source(str(root), cache_dir)
        arr = image_cache.open_or_build(root, [it.path for it in items], image_size,
                                        cache_dir, stream=stream, max_gb=cache_max_gb)
    except (cache_budget.CacheFull, remote.StorageError) as e:
        raise DataError(str(e)) from None
    y = torch.tensor([lookup[it.label] for it in items], dtype=torch.long)
    return torch.from_numpy(arr), y


def prepare(source: str, fractions: dict[str, float], seed: int, limit: int | None = None,
            cache_dir: str | None = None, conflicting_labels: str = "drop", stream=None) -> DataIndex:
    """Resolve, scan, limit and split a data source: everything done once before a search. A
    bucket's prefix (`s3://bucket/images/`) is copied into this node's cache and scanned there."""
    if remote.is_uri(source):
        try:
            root, others = remote_images.mirror(source, cache_dir or default_cache_dir(), stream)
        except remote.StorageError as e:
            raise DataError(f"--data {e}") from None
        index = scan(root)
        index.source, index.skipped = source, index.skipped + others
    else:
        index = scan(resolve_source(source, cache_dir))
        index.source = source if source in EMBEDDED else None
    resolve_conflicting_labels(index, conflicting_labels)
    _check_classes_not_empty(index)
    limit_per_class(index, limit, seed)
    split(index, fractions, seed)
    return index


def summary(index: DataIndex) -> dict:
    counts = index.counts()
    totals = Counter(it.label for it in index.items)
    return {
        "root": index.location,
        "presplit": index.presplit,
        "classes": index.classes,
        "images": len(index.items),
        "counts": counts,
        "imbalance_ratio": round(max(totals.values()) / max(1, min(totals.values())), 3),
        "skipped_non_images": index.skipped,
        "ignored": [{"path": p, "why": w} for p, w in index.ignored],
        "unreadable_images": [{"path": p, "error": e} for p, e in index.unreadable],
        "duplicates": duplicate_report(index),
        "conflicting_labels": conflicts_report(index),
    }
