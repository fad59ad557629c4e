"""Walk a folder of class subfolders as real folders hold them, and say what was left out.

Real image folders come from zips, phones, scrapers and other systems. They hold hidden files
(`.DS_Store`, `._IMG_1.jpg`, `.ipynb_checkpoints/`), `__MACOSX/` folders, files beside the class
folders, nested subfolders, symbolic links (to other disks, broken, or looping back), and
names that are not valid UTF-8. Here every file is either a candidate image of one class or
listed with the reason it was left out; nothing is silently lost and nothing loops.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from trainables.data.images import DataError

JUNK_FOLDERS = {"__MACOSX", "__pycache__", "@eaDir", "$RECYCLE.BIN", "System Volume Information"}


@dataclass
class Walk:
    """Files per class folder (relative to the root, '/'-separated) and what was left out."""
    classes: dict[str, list[str]] = field(default_factory=dict)
    other: list[str] = field(default_factory=list)  # files that are not images by their extension
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (relative path, why)


def _rel(path: Path, root: Path) -> str:
    """The path relative to the root, printable even where the name is not valid UTF-8."""
    return path.relative_to(root).as_posix().encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _left_out(path: Path, root: Path, is_dir: bool) -> str | None:
    """Why a directory entry is skipped without being looked at, or None."""
    name = path.name
    if name.startswith("."):
        return "hidden (name starts with '.')"
    if is_dir and name in JUNK_FOLDERS:
        return "system folder"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "file name is not valid UTF-8; rename it"
    return None


def _listed(folder: Path) -> list[os.DirEntry]:
    return sorted(os.scandir(folder), key=lambda e: e.name)


def _kept(entries: list[os.DirEntry], root: Path, walk: Walk):
    """(path, is_dir) of each entry to look at: a folder (links followed) or a file. Every other
    entry (hidden, system, badly named, a broken link, a pipe) goes to walk.ignored with why."""
    for entry in entries:
        path = Path(entry.path)
        is_dir = entry.is_dir()  # follows links
        why = _left_out(path, root, is_dir)
        if not why and not is_dir and not entry.is_file():
            why = "broken symbolic link" if entry.is_symlink() else "not a regular file (a pipe, socket or device)"
        if why:
            walk.ignored.append((_rel(path, root) + ("/" if is_dir else ""), why))
        else:
            yield path, is_dir


def _files_under(folder: Path, root: Path, walk: Walk, extensions: set[str], seen: set) -> list[str]:
    """Image files under FOLDER, following symbolic links to folders once each (no loops)."""
    found = []
    try:
        entries = _listed(folder)
    except OSError as e:
        walk.ignored.append((_rel(folder, root), f"cannot list folder ({e.strerror})"))
        return found
    for path, is_dir in _kept(entries, root, walk):
        if not is_dir:
            (found if path.suffix.lower() in extensions else walk.other).append(_rel(path, root))
            continue
        real = os.path.realpath(path)
        if real in seen:
            walk.ignored.append((_rel(path, root) + "/", "link to a folder walked elsewhere (a loop, or a class)"))
            continue
        seen.add(real)
        found += _files_under(path, root, walk, extensions, seen)
    return found


def walk_classes(folder: Path, root: Path, extensions: set[str], walk: Walk | None = None) -> Walk:
    """FOLDER's subfolders as classes (files under them, at any depth, belong to them); files
    directly in FOLDER belong to no class and are listed as ignored."""
    walk = walk or Walk()
    try:
        entries = _listed(folder)
    except OSError as e:
        raise DataError(f"{folder}: cannot list the folder ({e.strerror})") from None
    kept = list(_kept(entries, root, walk))
    # class folders are walked once each, as classes: a link into one from another is not followed
    seen = {os.path.realpath(folder)} | {os.path.realpath(path) for path, is_dir in kept if is_dir}
    for path, is_dir in kept:
        if is_dir:
            walk.classes[path.name] = _files_under(path, root, walk, extensions, seen)
        else:
            walk.ignored.append((_rel(path, root), "not inside a class folder"))
    return walk
