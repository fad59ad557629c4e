"""A results folder in a bucket (`--storage s3://bucket/results`), and this machine's copy of it.

Ray Tune writes the trials' results and checkpoints to the bucket itself. The search's own
files (space.yaml, split.csv, data.json, search.json, context.json, the Optuna journal,
trials.csv) are written to a local copy of the results folder and uploaded; the analysis
commands copy the folder down, work on the copy as on any results folder, and upload what
they wrote. The copy lives in this machine's cache, one folder per URI (`local_copy`).
"""
from __future__ import annotations

import shutil
from pathlib import Path

from trainables.context import TRAIN_RUNS
from trainables.data.dataset import default_cache_dir
from trainables.ray_internals import CHECKPOINT_PREFIX
from trainables.storage import remote

JOURNAL = "optuna.journal"  # the study's journal: appended to, so the longer copy is the newer


def local_copy(uri: str) -> Path:
    """This machine's copy of the results folder URI."""
    return default_cache_dir() / "results" / remote.copy_name(uri)


def _is_checkpoint(rel: str) -> bool:
    parts = rel.split("/")
    return parts[0] == TRAIN_RUNS or any(p.startswith(CHECKPOINT_PREFIX) for p in parts)


def pull(uri: str, checkpoints: bool = False, stream=None) -> Path:
    """Bring this machine's copy of URI up to date and return it: files missing here or of another
    size or time are fetched (the journal only when the bucket's is longer), files no longer in the
    bucket removed. Without CHECKPOINTS, Ray's checkpoints stay in the bucket (the search and
    analysis.rank need only the records). An empty URI empties the copy."""
    local = local_copy(uri)
    objects = remote.listing(uri)
    if not objects:
        shutil.rmtree(local, ignore_errors=True)
    for path in (p for p in local.rglob("*") if p.is_file()) if local.is_dir() else ():
        rel = path.relative_to(local).as_posix()
        if rel not in objects and rel != JOURNAL:  # removed from the bucket (or a search deleted there)
            path.unlink()
    taken = [rel for rel in objects
             if (checkpoints or not _is_checkpoint(rel)) and not rel.endswith(".hpo-write-check")]
    wanted = [rel for rel in taken if _older_here(local / rel, objects[rel], rel == JOURNAL)]
    local.mkdir(parents=True, exist_ok=True)
    remote.download(uri, wanted, local, versions={rel: objects[rel][1] for rel in wanted})
    if stream is not None:
        total = sum(objects[rel][0] for rel in wanted)
        left = f", {len(objects) - len(taken)} checkpoint files left in the bucket" if not checkpoints else ""
        print(f"copied {len(wanted)} files ({total / 1e6:.1f} MB; {len(taken) - len(wanted)} already here{left}) "
              f"of {uri} to {local}", file=stream, flush=True)
    return local


def _older_here(path: Path, version: tuple[int, int], append_only: bool) -> bool:
    if not path.is_file():
        return True
    size, mtime = version
    here = path.stat()
    return size > here.st_size if append_only else (size, mtime) != (here.st_size, here.st_mtime_ns)


def push(local: Path, uri: str, names: list[str]) -> None:
    """Upload LOCAL/name to URI/name for each file name, and every file under each folder name.
    A CSV names the bucket's paths, not this machine's copy's; the journal goes up to its last
    whole line (Optuna may be appending to it)."""
    files = []
    for name in names:
        p = local / name
        if p.is_dir():
            files += [str(f.relative_to(local)) for f in p.rglob("*") if f.is_file()]
        elif p.is_file():
            files.append(name)
    plain = [f for f in files if not f.endswith(".csv") and f != JOURNAL]
    remote.upload(local, plain, uri)
    for rel in set(files) - set(plain):
        raw = (local / rel).read_bytes()
        if rel == JOURNAL:
            raw = raw[:raw.rfind(b"\n") + 1]
        else:
            raw = raw.replace(str(local).encode(), uri.encode())
        remote.write_bytes(remote.join(uri, rel), raw)


def open_results(path: str, stream=None, checkpoints: bool = True) -> tuple[Path, str | None]:
    """(a local results folder, the URI it is a copy of or None) for an analysis command's
    argument: a folder as it is, a URI copied down (with its checkpoints, for commands that load
    models)."""
    if not remote.is_uri(path):
        return Path(path), None
    uri = path.rstrip("/")
    local = pull(uri, checkpoints=checkpoints, stream=stream)
    if not any(local.iterdir()):
        raise remote.StorageError(f"{uri}: no results there (no objects under this prefix)")
    if stream is not None:
        print(f"working on the local copy {local}; what this command writes is uploaded to {uri}",
              file=stream, flush=True)
    return local, uri
