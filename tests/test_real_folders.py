"""What real image folders hold, through the real CLI, one row per case: `search.run --dry-run`
on a small clean folder with one messy thing added, and the exact line it must print (or the
exact error), plus, where the case is about pixels, what the real loading code decodes.

The closing note of issue 14 shows this table."""
from __future__ import annotations

import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ROOT, make_folder, search_cli
from trainables.data import dataset

SMOKE = str(ROOT / "spaces" / "smoke.yaml")


def _png(path: Path, rgb=(200, 30, 30), size=(12, 12)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, rgb).save(path)


def _hidden(root):
    (root / ".DS_Store").write_bytes(b"Bud1\0\0")
    (root / ".git").mkdir()
    (root / "cat" / "._000.png").write_bytes(b"\0\5\26\7AppleDouble")  # macOS resource fork
    _png(root / "cat" / ".ipynb_checkpoints" / "000-checkpoint.png")


def _macosx(root):
    (root / "__MACOSX" / "cat").mkdir(parents=True)
    (root / "__MACOSX" / "cat" / "._000.png").write_bytes(b"\0\5\26\7")


def _zero_bytes(root):
    (root / "dog" / "empty.jpg").touch()


def _nested(root):
    for i in range(5):
        _png(root / "cat" / "2019" / "summer" / f"{i}.png", (10 * i, 200, 90))


def _spaces_and_non_ascii(root):
    for i in range(10):
        _png(root / "chat noir é" / f"photo {i} ü.png", (20 * i, 20, 220))


def _non_utf8_name(root):
    with open(os.path.join(os.fsencode(root / "cat"), b"caf\xe9.png"), "wb") as f:
        f.write((root / "cat" / "000.png").read_bytes())


def _symlinks(root):
    outside = root.parent / "outside"
    _png(outside / "wolf.png", (90, 90, 90))
    (root / "dog" / "link.png").symlink_to(outside / "wolf.png")
    (root / "dog" / "gone.png").symlink_to(root.parent / "no-such.png")
    make_folder(root.parent / "wolves", {"w": 10}, seed=3)
    (root / "wolf").symlink_to(root.parent / "wolves" / "w", target_is_directory=True)  # a class elsewhere


def _symlink_loops(root):
    (root / "cat" / "loop").symlink_to(root, target_is_directory=True)
    (root / "cat" / "self").symlink_to(root / "cat", target_is_directory=True)


def _exif_rotated(root):
    img = np.zeros((20, 40, 3), np.uint8)  # stored landscape: left half red, right half blue
    img[:, :20] = (255, 0, 0)
    img[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to view (what phones write)
    Image.fromarray(img).save(root / "fox" / "phone.jpg", exif=exif, quality=95)


def _sixteen_bit(root):
    Image.fromarray(np.full((12, 12), 32896, np.uint16)).save(root / "fox" / "scan16.png")  # 50 % grey


def _palette_transparent(root):
    im = Image.new("P", (12, 12), 1)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    im.save(root / "fox" / "palette.png", transparency=1)  # every pixel transparent: white on a page


def _animated_gif(root):
    frames = [Image.new("RGB", (12, 12), c) for c in ((250, 0, 0), (0, 250, 0), (0, 0, 250))]
    frames[0].save(root / "fox" / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)


def _bomb(root):
    """A PNG that claims 20000×10000 pixels in a few bytes: PIL refuses it before decoding."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", 20000, 10000, 8, 2, 0, 0, 0)
    (root / "fox" / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                                            + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b""))


def _case_clash(root):
    make_folder(root / "Cat_", {"x": 3})
    (root / "Cat_" / "x").rename(root / "Cat")


def _loose_files(root):
    _png(root / "notes.jpg")


def _upper_case_and_other_extensions(root):
    _png(root / "dog" / "IMG_1.PNG", (1, 2, 3))
    (root / "dog" / "IMG_2.HEIC").write_bytes(b"\0\0\0\x18ftypheic")
    (root / "dog" / "labels.txt").write_text("dog\n")


def _truncated(root):
    Image.new("RGB", (60, 60), (200, 200, 200)).save(root / "dog" / "cut.jpg", quality=95)
    (root / "dog" / "cut.jpg").write_bytes((root / "dog" / "cut.jpg").read_bytes()[:300])


def _pixel(root, rel, size=8):
    """What a trial trains on: the real loading code, through the decoded cache."""
    x, _ = dataset.load_images(root, [dataset.Item(rel, "fox")], ["fox"], size, cache_dir=root.parent / "cache")
    return x[0].permute(1, 2, 0).numpy()


def _upright(root):
    px = _pixel(root, "fox/phone.jpg")
    assert px[1, 4, 0] > 200 and px[1, 4, 2] < 60 and px[6, 4, 2] > 200  # red on top, blue below


ROWS = [  # (case, what to add to a clean cat/dog/fox folder, exit code, the exact line printed, check)
    ("hidden files and folders", _hidden, 0,
     "  ignored 4 (hidden (name starts with '.')): .DS_Store; .git/; cat/._000.png; cat/.ipynb_checkpoints/", None),
    ("__MACOSX folder from a zip", _macosx, 0, "  ignored 1 (system folder): __MACOSX/", None),
    ("zero-byte file", _zero_bytes, 0, "  skipped 1 unreadable images: dog/empty.jpg (empty file (0 bytes))", None),
    ("nested folders", _nested, 0, "  cat     11      2      2", None),
    ("spaces and non-ASCII in names", _spaces_and_non_ascii, 0, "  chat noir é      6      2      2", None),
    ("file name not valid UTF-8", _non_utf8_name, 0,
     "  ignored 1 (file name is not valid UTF-8; rename it): cat/caf\ufffd.png", None),
    ("symlinks: to a file, broken, to a class folder", _symlinks, 0,
     "  ignored 1 (broken symbolic link): dog/gone.png", None),
    ("symlink loops", _symlink_loops, 0,
     "  ignored 2 (link to a folder walked elsewhere (a loop, or a class)): cat/loop/; cat/self/", None),
    ("EXIF-rotated JPEG", _exif_rotated, 0, "  fox      7      2      2", _upright),
    ("16-bit PNG", _sixteen_bit, 0, "  fox      7      2      2",
     lambda root: np.testing.assert_allclose(_pixel(root, "fox/scan16.png"), 128, atol=1)),
    ("palette PNG with transparency", _palette_transparent, 0, "  fox      7      2      2",
     lambda root: np.testing.assert_array_equal(_pixel(root, "fox/palette.png"), 255)),
    ("animated GIF", _animated_gif, 0, "  fox      7      2      2",
     lambda root: np.testing.assert_allclose(_pixel(root, "fox/anim.gif")[2, 2], (250, 0, 0), atol=3)),
    ("decompression bomb", _bomb, 0,
     "  skipped 1 unreadable images: fox/bomb.png (too large to decode safely (Image size (200000000 pixels) exceeds "
     "limit of 178956970 pixels, could be decompression bomb DOS attack.); shrink it or remove it)", None),
    ("class folders differing only in case", _case_clash, 2,
     "error: {root}: class folders 'Cat' and 'cat' differ only in case; merge them into one folder, or rename one "
     "if they are different classes", None),
    ("image beside the class folders", _loose_files, 0, "  ignored 1 (not inside a class folder): notes.jpg", None),
    ("upper-case and unknown extensions", _upper_case_and_other_extensions, 0,
     "  skipped 2 non-image files: dog/IMG_2.HEIC; dog/labels.txt", None),
    ("truncated JPEG", _truncated, 0,
     "  skipped 1 unreadable images: dog/cut.jpg (OSError: Truncated File Read)", None),
]


def _case_folder(tmp_path, i, add) -> Path:
    root = make_folder(tmp_path / f"case{i}" / "imgs", {"cat": 10, "dog": 10, "fox": 10})
    add(root)
    return root


@pytest.mark.timeout(600)
def test_every_messy_folder_case_gets_its_exact_outcome(tmp_path):
    roots = [_case_folder(tmp_path, i, add) for i, (_, add, *_rest) in enumerate(ROWS)]
    with ThreadPoolExecutor(4) as pool:
        runs = list(pool.map(lambda r: search_cli([SMOKE, "--data", str(r), "--dry-run"], timeout=300), roots))
    failures = []
    for (case, _, code, line, check), root, r in zip(ROWS, roots, runs):
        printed = (r.stdout + r.stderr).splitlines()
        want = line.format(root=root)
        if r.returncode != code or want not in printed:
            failures.append(f"{case}: exit {r.returncode} (want {code}); want line {want!r}; "
                            f"got:\n{r.stdout}{r.stderr}")
        elif "Traceback" in r.stderr:
            failures.append(f"{case}: traceback\n{r.stderr}")
        elif check:
            check(root)
    assert not failures, "\n\n".join(failures)


@pytest.mark.timeout(600)
def test_a_search_runs_on_a_folder_holding_every_case_at_once(tmp_path):
    """Every case but the fatal one in one folder: a real search decodes and trains on it."""
    root = make_folder(tmp_path / "imgs", {"cat": 10, "dog": 10, "fox": 10})
    for _, add, code, *_ in ROWS:
        if code == 0:
            add(root)
    r = search_cli([SMOKE, "--data", str(root), "--storage", str(tmp_path / "res"), "--set", "search.num_samples=1",
                    "--set", "space.epochs=1", "--set", "search.scheduler.max_t=1"], timeout=500)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and "1 completed" in r.stdout
