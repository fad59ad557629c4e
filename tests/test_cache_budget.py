"""The decoded-image cache stays within its cap (least recently used files go first), checks the
disk before a build, leaves nothing half-written when a build is killed, and can be listed and
cleaned from the command line."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import namedtuple

import pytest

from search import cache as cache_cli
from tests.conftest import ROOT, make_folder, search_cli
from trainables.data import cache_budget, dataset, image_cache, images

SIDE = 16  # bytes per decoded image: 3 * 16 * 16 = 768


def _load(root, cache, size=SIDE, **kw):
    index = dataset.scan(root)
    return dataset.load_images(root, index.items, index.classes, size, cache_dir=cache, **kw)


def _files(cache):
    return {p.stem.split("-")[1] for p in (cache / "decoded").glob("*.npy")}  # e.g. "40x16"


@pytest.fixture(autouse=True)
def _fresh_process_state(monkeypatch):
    """Each test starts as a new process would: no file counted as in use by it."""
    monkeypatch.setattr(image_cache, "_used", set())
    monkeypatch.delenv(cache_budget.CACHE_MAX_ENV, raising=False)


@pytest.mark.timeout(120)
def test_least_recently_used_files_go_first_when_over_the_cap(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "imgs", {"a": 20, "b": 20})  # 40 images
    cache = tmp_path / "cache"
    for size in (16, 20, 24):  # 30 kB, 48 kB, 69 kB
        _load(root, cache, size)
    files = {p.stem.split("-")[1]: p for p in (cache / "decoded").glob("*.npy")}
    assert set(files) == {"40x16", "40x20", "40x24"}
    day = 86400
    os.utime(files["40x16"], (time.time() - 2 * day,) * 2)
    os.utime(files["40x20"], (time.time() - 3 * day,) * 2)  # the least recently used
    os.utime(files["40x24"], (time.time() - day,) * 2)
    monkeypatch.setattr(image_cache, "_used", set())  # a new search, in a new process

    cap_gb = 175_000 / cache_budget.GB  # room for the 24 px file (69 kB) and the new 28 px one (94 kB)
    _load(root, cache, 28, cache_max_gb=cap_gb)
    assert _files(cache) == {"40x24", "40x28"}  # 20 px went first, then 16 px; 24 px was used last
    assert sum(e.bytes for e in cache_budget.entries(cache / "decoded")) <= 175_000


@pytest.mark.timeout(120)
def test_a_file_used_in_the_last_hour_is_kept_even_over_the_cap(tmp_path, monkeypatch):
    """Another search, maybe on another node, may have it mapped."""
    root = make_folder(tmp_path / "imgs", {"a": 20, "b": 20})
    cache = tmp_path / "cache"
    _load(root, cache, 16)
    [old] = (cache / "decoded").glob("*.npy")
    os.utime(old, (time.time() - 1800,) * 2)  # half an hour ago
    monkeypatch.setattr(image_cache, "_used", set())
    _load(root, cache, 24, cache_max_gb=80_000 / cache_budget.GB)  # room for the new file only
    assert _files(cache) == {"40x16", "40x24"}
    os.utime(old, (time.time() - 7200,) * 2)  # two hours ago: free to go
    monkeypatch.setattr(image_cache, "_used", set())
    _load(root, cache, 28, cache_max_gb=180_000 / cache_budget.GB)
    assert "40x16" not in _files(cache) and "40x28" in _files(cache)


@pytest.mark.timeout(120)
def test_a_file_this_process_uses_is_never_evicted_by_its_own_builds(tmp_path):
    root = make_folder(tmp_path / "imgs", {"a": 20, "b": 20})
    cache = tmp_path / "cache"
    cap_gb = 100_000 / cache_budget.GB
    _load(root, cache, 16, cache_max_gb=cap_gb)
    _load(root, cache, 24, cache_max_gb=cap_gb)  # over the cap together, but both are this search's
    assert _files(cache) == {"40x16", "40x24"}


@pytest.mark.timeout(120)
def test_a_set_larger_than_the_cap_is_one_clear_error(tmp_path):
    root = make_folder(tmp_path / "imgs", {"a": 20, "b": 20})
    with pytest.raises(images.DataError, match=r"need 34 kB decoded, more than the cache cap of 1 kB; "
                                             r"raise data\.cache_max_gb \(or HPO_CACHE_MAX_GB\)"):
        _load(root, tmp_path / "cache", cache_max_gb=1e-6)
    assert not list((tmp_path / "cache" / "decoded").glob("*.npy"))


@pytest.mark.timeout(120)
def test_a_full_disk_is_found_before_the_build(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "imgs", {"a": 20, "b": 20})
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(cache_budget.shutil, "disk_usage", lambda p: usage(10 * 2**30, 10 * 2**30, 2**20))
    with pytest.raises(images.DataError, match=r"needs 256\.0 MB of disk but 1\.0 MB is free; free some space, "
                                             r"or set data\.cache_dir to a larger disk"):
        _load(root, tmp_path / "cache")
    assert not list((tmp_path / "cache" / "decoded").glob("*"))[1:]  # at most the lock file


_BUILD = """
import sys
from pathlib import Path
from trainables.data import dataset
root, cache = sys.argv[1], sys.argv[2]
index = dataset.scan(Path(root))
dataset.load_images(root, index.items, index.classes, 256, cache_dir=cache)
"""


@pytest.mark.timeout(300)
def test_a_killed_build_leaves_no_partial_file(tmp_path):
    root = make_folder(tmp_path / "imgs", {"a": 300, "b": 300}, size=64)  # 600 images at 256 px: seconds
    cache = tmp_path / "cache"
    proc = subprocess.Popen([sys.executable, "-c", _BUILD, str(root), str(cache)], cwd=ROOT)
    try:
        deadline = time.time() + 120
        while not list((cache / "decoded").glob(".*.tmp")) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert list((cache / "decoded").glob(".*.tmp")), "the build never started"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert not list((cache / "decoded").glob("*.npy"))  # killed before the rename: no cache file

    x, _ = _load(root, cache, 256)  # the next build sweeps the dead one's leftovers
    assert x.shape == (600, 3, 256, 256) and int(x[-1].float().mean()) > 0
    assert sorted(p.name for p in (cache / "decoded").iterdir() if p.name.startswith(".")) == []


@pytest.mark.timeout(120)
def test_list_and_clean_from_the_command_line(tmp_path, capsys):
    root = make_folder(tmp_path / "imgs", {"a": 20, "b": 20})
    cache = tmp_path / "cache"
    for size in (16, 24):
        _load(root, cache, size)
    old = next((cache / "decoded").glob("*-40x16.npy"))
    os.utime(old, (time.time() - 3 * 86400,) * 2)

    assert cache_cli.main(["--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out
    assert "2 file(s), 98 kB of a 20.00 GB cap" in out
    lines = [ln for ln in out.splitlines() if "images at" in ln]
    # oldest first
    assert "30 kB       40 images at   16 px  last used      3 d ago" in lines[0] and str(root) in lines[0]
    assert "24 px  last used     just now" in lines[1]

    assert cache_cli.main(["clean", "--cache-dir", str(cache), "--unused-days", "1"]) == 0
    assert "removed 1 file(s)" in capsys.readouterr().out and _files(cache) == {"40x24"}
    assert cache_cli.main(["clean", "--cache-dir", str(cache)]) == 0
    assert _files(cache) == set() and not list((cache / "decoded").glob("*.json"))


@pytest.mark.timeout(120)
def test_a_bad_cap_variable_stops_the_search_before_it_starts(tmp_path):
    env = {**os.environ, cache_budget.CACHE_MAX_ENV: "lots"}
    r = search_cli([str(ROOT / "spaces" / "smoke.yaml"), "--dry-run"], timeout=100, env=env)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == ("error: HPO_CACHE_MAX_GB='lots': not a number of GB above 0 "
                                                 "(e.g. HPO_CACHE_MAX_GB=20)")
