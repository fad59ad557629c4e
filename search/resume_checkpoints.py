"""Before `--resume`: make each unfinished trial's files agree with Tune's last saved state.

Tune saves its experiment state every ~10 s, asynchronously, but writes each report to
result.json and removes checkpoints beyond `checkpoint.keep` at once. A driver killed in
between (kill -9, a lost head node) leaves, for a trial that was running:
- a state whose last report is older than result.json's last rows, whose checkpoints (named
  after the state's count) the resumed trial will write again under the same names;
- sometimes, the checkpoint that state restores from already removed: Tune then fails the trial
  ("Could not recover from checkpoint as it does not exist on storage anymore").
The window is widest with results in a bucket, where each upload takes seconds. So, for each such
trial: result.json keeps its rows up to the state's last report (the trial reports the rest again),
its checkpoints after that report's are removed (the resumed trial writes its own under those
names), and a removed restore checkpoint is replaced by a copy of the trial's newest one (one is
removed only when newer ones exist): the trial continues from there.
"""
from __future__ import annotations

import json
from pathlib import Path

from search import tune_files
from trainables.ray_internals import CHECKPOINT_DIR_NAME, CHECKPOINT_PREFIX, RESULTS_FILE
from trainables.storage import remote


def reconcile(results: str, local: Path) -> list[str]:
    """Mend every unfinished trial of RESULTS (a folder or a URI; Tune's state read from LOCAL,
    this machine's copy) as the module says. Returns one line for each thing changed."""
    from pyarrow import fs as pafs

    said = []
    f, base = remote.filesystem(results)
    try:
        for trial, last in tune_files.last_saved_reports(local).items():
            folder, name = f"{base}/{trial}", last[CHECKPOINT_DIR_NAME]
            dropped = _cut_reports(f, f"{folder}/{RESULTS_FILE}", last)
            existing = sorted(i.base_name for i in f.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
                              if i.type == pafs.FileType.Directory and i.base_name.startswith(CHECKPOINT_PREFIX))
            newer = [c for c in existing if c > name]
            if name not in existing and newer:
                if f.type_name == "local":  # it copies into a folder that exists (a bucket has no folders)
                    f.create_dir(f"{folder}/{name}")
                pafs.copy_files(f"{folder}/{newer[-1]}", f"{folder}/{name}", source_filesystem=f,
                                destination_filesystem=f)
                said.append(f"{trial}: the checkpoint Tune last saved, {name}, was removed after; it continues "
                            f"from its newest, {newer[-1]}")
            for c in newer:
                f.delete_dir(f"{folder}/{c}")
            if dropped:
                said.append(f"{trial}: {dropped} report(s) after Tune's last saved state are reported again")
    except OSError as e:
        raise remote.StorageError(remote.explain(results, e)) from None
    return said


def _cut_reports(f, path: str, last: dict) -> int:
    """Keep result.json's rows up to the last one that is LAST (same epoch and checkpoint);
    returns how many rows were dropped (none where LAST is not found)."""
    try:
        with f.open_input_stream(path) as src:
            lines = src.read().decode(errors="replace").splitlines()
    except FileNotFoundError:
        return 0
    keep = None
    for i, line in enumerate(lines):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("epoch") == last.get("epoch") and row.get(CHECKPOINT_DIR_NAME) == last[CHECKPOINT_DIR_NAME]:
            keep = i + 1
    if keep is None or keep == len(lines):
        return 0
    with f.open_output_stream(path) as out:
        out.write(("\n".join(lines[:keep]) + "\n").encode())
    return len(lines) - keep
