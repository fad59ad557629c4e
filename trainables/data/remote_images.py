"""Images in object storage (`--data s3://bucket/images/`), copied once into each node's cache.

A folder of class folders in a bucket is copied, on each node that needs it, into
`CACHE/remote/<bucket>-<hash>/`, where the scan and the decoded-once cache (`image_cache`)
read it as any local folder. A manifest next to it records every copied object's size, mtime
and SHA-1:
- the search's driver lists the prefix and fetches every image whose size or mtime changed
  (`mirror`), then scans the copy and saves each image's SHA-1 in the split;
- a trial on another node fetches only the images its split names whose copy is missing or
  has another SHA-1 (`fetch`), and refuses an image whose bytes changed since the split.
Copies run in parallel under a file lock, so the trials of one node fetch each image once.
"""
from __future__ import annotations

import hashlib
import json
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock

from trainables.data.image_cache import progress
from trainables.data.images import IMAGE_EXTENSIONS, DataError
from trainables.storage import remote


def local_root(uri: str, cache_dir: str | Path) -> Path:
    """Where this node keeps its copy of URI's images: readable, and one folder per prefix."""
    return Path(cache_dir).expanduser() / "remote" / remote.copy_name(uri)


@contextmanager
def _locked(root: Path):
    root.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(root.parent / f"{root.name}.lock"):  # the node's other trials wait for one copy
        yield


def _manifest(root: Path) -> dict:
    try:
        return json.loads((root.parent / f"{root.name}.json").read_text())
    except (OSError, ValueError):
        return {}


def _save_manifest(root: Path, manifest: dict) -> None:
    tmp = root.parent / f"{root.name}.json.part"
    tmp.write_text(json.dumps(manifest))
    tmp.replace(root.parent / f"{root.name}.json")


class _Copy:
    """One parallel copy's hook on each file: refuses bytes other than EXPECT's, records each
    file's SHA-1, and prints progress as the image cache's build does."""

    def __init__(self, uri: str, total: int, stream, expect: dict[str, str] | None = None):
        self.uri, self.total, self.stream, self.expect = uri, total, stream, expect or {}
        self.sha1: dict[str, str] = {}
        self.done, self.started, self.lock = 0, time.time(), threading.Lock()

    def __call__(self, rel: str, raw: bytes) -> None:
        digest = hashlib.sha1(raw).hexdigest()
        if rel in self.expect and self.expect[rel] != digest:
            raise DataError(f"{remote.join(self.uri, rel)}: changed in the bucket since the search split the data "
                            "(its bytes differ); start a new search, or put the image back")
        with self.lock:
            self.sha1[rel] = digest
            self.done += 1
            if self.done % max(1, self.total // 20) == 0 or self.done == self.total:
                progress(f"copying {self.total} images from {self.uri}", self.done, self.total, self.started,
                         self.stream)


def _copy_in(uri: str, root: Path, manifest: dict, paths: list[str], stream, versions: dict | None = None,
             expect: dict[str, str] | None = None) -> None:
    """Copy PATHS of URI into ROOT in parallel, recording each copied file's version (from
    VERSIONS) and SHA-1 in MANIFEST, saved also when the copy stops halfway."""
    copy = _Copy(uri, len(paths), stream, expect)
    try:
        remote.download(uri, paths, root, each=copy)
    finally:
        if paths and stream is not None and getattr(stream, "isatty", lambda: False)():
            print(file=stream, flush=True)  # end the live counter's line
        for rel, digest in copy.sha1.items():
            manifest[rel] = {"version": list(versions[rel]) if versions else None, "sha1": digest}
        _save_manifest(root, manifest)


def mirror(uri: str, cache_dir: str | Path, stream=None) -> tuple[Path, list[str]]:
    """Make this node's copy of URI match the bucket (the search's driver, before the scan):
    returns the copy's folder and the objects that are not images (the scan's "skipped")."""
    objects = remote.listing(uri)
    if not objects:
        raise DataError(f"--data {uri}: no objects under this prefix (give the prefix that holds the class folders)")
    images = {p: v for p, v in objects.items() if Path(p).suffix.lower() in IMAGE_EXTENSIONS}
    if not images:
        raise DataError(f"--data {uri}: no images under this prefix ({', '.join(sorted(IMAGE_EXTENSIONS))}); "
                        f"found e.g. {', '.join(sorted(objects)[:3])}")
    root = local_root(uri, cache_dir)
    with _locked(root):
        manifest = _manifest(root)
        for part in root.rglob(".*.part*") if root.is_dir() else ():  # a copy killed halfway
            part.unlink(missing_ok=True)
        for rel in set(manifest) - set(images):  # gone from the bucket: gone from the copy
            (root / rel).unlink(missing_ok=True)
            del manifest[rel]
        stale = sorted(p for p, (size, mtime) in images.items()
                       if manifest.get(p, {}).get("version") != [size, mtime] or not (root / p).is_file())
        _copy_in(uri, root, manifest, stale, stream, versions=images)
    return root, sorted(set(objects) - set(images))


def fetch(uri: str, items, cache_dir: str | Path, stream=None) -> Path:
    """This node's copy of URI holding ITEMS (split rows: path and SHA-1), fetching what is
    missing or different; returns the copy's folder."""
    root = local_root(uri, cache_dir)
    with _locked(root):
        manifest = _manifest(root)
        want = {it.path: it.sha1 for it in items}
        need = sorted(p for p, digest in want.items()
                      if manifest.get(p, {}).get("sha1") != digest or not (root / p).is_file())
        if need:
            _copy_in(uri, root, manifest, need, stream, expect=want)
    return root
