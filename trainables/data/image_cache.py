"""Decode each image once per (file list, image size), for every trial and every later search.

A search trains the same images in dozens of trials, each for several epochs. Decoding and
resizing a JPEG costs far more than the model's step on a small image, so the decoded pixels
go into one uint8 `.npy` file (N×3×S×S) that every trial memory-maps: all trials on a node
share it through the page cache, and a second search on the same data finds it again.

The file's name is a hash of the image list (path, byte size, mtime) and the size, so editing,
adding or removing an image gives a new file; nothing stale is ever read. It is written to a
temporary name and renamed, under a lock, so concurrent trials build it once and a crash never
leaves a half-written cache. `trainables.data.cache_budget` keeps the folder within its size cap and
the disk's free space.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from filelock import FileLock

from trainables.data import cache_budget
from trainables.data.images import DataError, open_rgb

CACHE_VERSION = 1  # bump when the decoding (resize filter, alpha handling) changes


def cache_key(root: Path, paths: list[str], image_size: int) -> str:
    """Hash of what the pixels depend on: which files, their bytes (size + mtime) and the size."""
    h = hashlib.sha1()
    h.update(json.dumps([CACHE_VERSION, str(root), int(image_size)]).encode())
    for p in paths:
        st = os.stat(root / p)
        h.update(f"\n{p}\t{st.st_size}\t{st.st_mtime_ns}".encode())
    return h.hexdigest()[:24]


def decoded_dir(cache_dir: str | Path) -> Path:
    return Path(cache_dir).expanduser() / "decoded"


def cache_path(cache_dir: Path, root: Path, paths: list[str], image_size: int) -> Path:
    return decoded_dir(cache_dir) / f"{cache_key(root, paths, image_size)}-{len(paths)}x{image_size}.npy"


def progress(label: str, done: int, total: int, started: float, stream) -> None:
    """A live counter on a terminal; in a log file, one line when the build is done."""
    if stream is None:
        return
    tty = getattr(stream, "isatty", lambda: False)()
    if tty or done == total:
        print(f"{chr(13) if tty else ''}  {label}: {done}/{total} images ({time.time() - started:.1f}s)",
              end="" if tty else "\n", file=stream, flush=True)


def build(root: Path, paths: list[str], image_size: int, dest: Path, threads: int | None = None,
          stream=None) -> None:
    """Decode and resize `paths` in parallel into `dest`; an image that fails stops the build, by name.

    Corrupt images were already dropped when the folder was scanned; one failing here changed
    since, and silently skipping it would shift every label after it.
    """
    tmp = cache_budget.partial_name(dest)
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), 3, image_size, image_size))

    def one(i: int) -> None:
        try:
            out[i] = np.asarray(open_rgb(root / paths[i], image_size)).transpose(2, 0, 1)
        except Exception as e:  # PIL raises many types; all mean this file cannot be used
            raise DataError(f"{root / paths[i]}: cannot decode image while building the cache "
                            f"({type(e).__name__}: {e}); fix or remove it and rerun") from None

    label = f"decoding {len(paths)} images at {image_size} px into {dest.parent}"
    started, step = time.time(), max(1, len(paths) // 20)
    try:
        with ThreadPoolExecutor(max_workers=threads or min(8, os.cpu_count() or 1)) as pool:
            for done, _ in enumerate(pool.map(one, range(len(paths))), 1):  # PIL decodes without the GIL
                if done % step == 0 or done == len(paths):
                    progress(label, done, len(paths), started, stream)
        out.flush()
        dest.with_suffix(".json").write_text(json.dumps({"source": str(root), "images": len(paths),
                                                         "image_size": int(image_size)}))
        os.replace(tmp, dest)
    finally:
        if stream is not None and getattr(stream, "isatty", lambda: False)():
            print(file=stream, flush=True)
        tmp.unlink(missing_ok=True)


def open_or_build(root: str | Path, paths: list[str], image_size: int, cache_dir: str | Path,
                  stream=sys.stderr, max_gb: float | None = None) -> np.ndarray:
    """The decoded images of `paths` (in that order), memory-mapped, built if missing.

    Mapped copy-on-write: torch can wrap it without a copy, and pages stay shared between the
    trials of a node because nothing writes to them. Before a build the cache is trimmed to
    its cap (MAX_GB, see `cache_budget.cap_bytes`), never removing a file this process uses."""
    root = Path(root)
    dest = cache_path(Path(cache_dir), root, paths, image_size)
    for _ in range(3):  # another process may remove the file between the check and the map
        if not dest.exists():
            _build_once(root, paths, image_size, dest, stream, max_gb)
        cache_budget.touch(dest)
        try:
            arr = np.load(dest, mmap_mode="c")
        except FileNotFoundError:
            continue
        _used.add(dest)
        return arr
    raise FileNotFoundError(f"{dest}: removed by another process as soon as it was built; "
                            "raise the cache cap (data.cache_max_gb)")


def _build_once(root: Path, paths: list[str], image_size: int, dest: Path, stream, max_gb) -> None:
    """Build DEST unless another process does: under its lock, the cache trimmed first."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(dest.with_suffix(".lock")):  # a second trial waits for the first one's build
        if dest.exists():
            return
        cache_budget.sweep_partials(dest.parent)
        need = len(paths) * 3 * image_size * image_size + 4096  # pixels + .npy header
        removed = cache_budget.make_room(dest.parent, need, cache_budget.cap_bytes(max_gb), _used | {dest})
        if removed and stream is not None:
            print(f"  cache: removed {len(removed)} least recently used file(s), "
                  f"{cache_budget.human(sum(e.bytes for e in removed))}, to stay under the cap",
                  file=stream, flush=True)
        build(root, paths, image_size, dest, stream=stream)


_used: set[Path] = set()  # files this process has mapped: never evicted by its own builds
