"""Keep the decoded-image cache within a size cap and the disk it lives on.

Each decoded file (`trainables.data.image_cache`) is one data set at one image size; a search over
several sizes, or many searches, add files without end. Here:
- a cap (`data.cache_max_gb` in the space, else `HPO_CACHE_MAX_GB`, else DEFAULT_MAX_GB), kept by
  removing the least recently used files before a build (a file's mtime is its last use: every
  open touches it; the image list it was built from is hashed into its name, so the mtime is
  free for this);
- a free-space check before a build, so a full disk fails at once with the numbers, not halfway;
- a sweep of the temporary files of builds whose process died (kill -9, power loss).
A file used in the last hour is never removed (a trial on this or another node may have it
mapped, and over NFS another node's mapping of a removed file fails): the cap can then be
exceeded for a while. A later trial that needs a removed file builds it again.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

CACHE_MAX_ENV = "HPO_CACHE_MAX_GB"
DEFAULT_MAX_GB = 20.0
FREE_MARGIN = 256 * 2**20  # left free beyond the file itself: logs and checkpoints need room too
IN_USE_S = 3600  # a file used this recently is never evicted: every trial that maps it touches it
GB = 2**30


def human(n: float) -> str:
    """A byte count as people read it: 30 kB, 69.1 MB, 3.40 GB."""
    for unit, size, fmt in (("GB", GB, "{:.2f}"), ("MB", 2**20, "{:.1f}"), ("kB", 2**10, "{:.0f}")):
        if n >= size:
            return f"{fmt.format(n / size)} {unit}"
    return f"{n:.0f} B"


class CacheFull(OSError):
    """No room for a build; the message says how much is needed and how much there is."""


@dataclass
class Entry:
    """One decoded file: what it holds and when a search last used it."""
    path: Path
    bytes: int
    last_used: float
    images: int
    image_size: int
    source: str


def cap_bytes(setting_gb: float | None = None) -> int:
    """The cap in bytes: the space's setting, else HPO_CACHE_MAX_GB, else DEFAULT_MAX_GB."""
    if setting_gb is None:
        raw = os.environ.get(CACHE_MAX_ENV)
        try:
            setting_gb = float(raw) if raw else DEFAULT_MAX_GB
        except ValueError:
            setting_gb = float("nan")
        if not (math.isfinite(setting_gb) and setting_gb > 0):
            raise CacheFull(f"{CACHE_MAX_ENV}={raw!r}: not a number of GB above 0 (e.g. {CACHE_MAX_ENV}=20)")
    return int(setting_gb * GB)


def entries(decoded_dir: str | Path) -> list[Entry]:
    """Every finished decoded file, least recently used first."""
    found = []
    for p in Path(decoded_dir).glob("*.npy"):
        try:
            st = p.stat()
        except FileNotFoundError:  # removed by another process meanwhile
            continue
        m = re.search(r"-(\d+)x(\d+)\.npy$", p.name)
        source = _sidecar(p).get("source", "(source not recorded)")
        found.append(Entry(p, st.st_size, st.st_mtime, int(m[1]) if m else 0, int(m[2]) if m else 0, source))
    return sorted(found, key=lambda e: e.last_used)


def _sidecar(npy: Path) -> dict:
    try:
        return json.loads(npy.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return {}


def remove(entry: Entry) -> None:
    """The file and its description; its lock file stays (a process may be waiting on it)."""
    for p in (entry.path, entry.path.with_suffix(".json")):
        p.unlink(missing_ok=True)


def evict_lru(files: list[Entry], total: int, target: int, spare) -> tuple[list[Entry], int]:
    """Remove FILES (least recently used first) until TOTAL bytes are down to TARGET, skipping
    those SPARE(entry) protects; returns what was removed and the new total."""
    removed = []
    for e in files:
        if total <= target:
            break
        if spare(e):
            continue
        remove(e)
        removed.append(e)
        total -= e.bytes
    return removed, total


def make_room(decoded_dir: Path, need: int, cap: int, keep: set[Path], now: float | None = None) -> list[Entry]:
    """Before writing NEED bytes: remove least recently used files until the cache (builds under
    way included) fits the cap, then check the disk. Never removes a file in KEEP (this
    process's) or one used in the last IN_USE_S (another search's, maybe on another node, may
    have it mapped). Returns what was removed; raises CacheFull."""
    if need > cap:
        raise CacheFull(f"{decoded_dir}: these images need {human(need)} decoded, more than the cache cap of "
                        f"{human(cap)}; raise data.cache_max_gb (or {CACHE_MAX_ENV}) or lower image_size")
    now = now or time.time()
    files = entries(decoded_dir)
    removed, _ = evict_lru(files, sum(e.bytes for e in files) + _partial_bytes(decoded_dir), cap - need,
                           spare=lambda e: e.path in keep or now - e.last_used < IN_USE_S)
    free = shutil.disk_usage(decoded_dir).free
    if free < need + FREE_MARGIN:
        raise CacheFull(f"{decoded_dir}: decoding these images needs {human(need + FREE_MARGIN)} of disk but "
                        f"{human(free)} is free; free some space, or set data.cache_dir to a larger disk")
    return removed


def _partial_bytes(decoded_dir: Path) -> int:
    """Bytes the builds under way will hold (their files are full size, sparse, from the start)."""
    total = 0
    for p in Path(decoded_dir).glob(".*.tmp"):
        with contextlib.suppress(OSError):
            total += p.stat().st_size
    return total


def partial_name(dest: Path) -> Path:
    """Where a build writes before its rename: named by host and PID, so that a later build can
    tell a dead build's leftovers from a live one (also with a cache folder shared by nodes)."""
    return dest.with_name(f".{dest.name}.{socket.gethostname()}.{os.getpid()}.tmp")


def sweep_partials(decoded_dir: Path) -> list[Path]:
    """Remove the temporary files of this host's builds whose process is gone."""
    removed = []
    mine = re.compile(rf"^\..+\.npy\.{re.escape(socket.gethostname())}\.(\d+)\.tmp$")
    for p in Path(decoded_dir).glob(".*.tmp"):
        m = mine.match(p.name)
        if m and not _alive(int(m[1])):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def touch(path: Path) -> None:
    """Mark a file as used now (its mtime is its last use)."""
    try:
        os.utime(path)  # "now": allowed to any user who may write the file, not only its owner
    except OSError:  # a read-only cache still works; it just cannot record use
        pass
