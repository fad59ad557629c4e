"""`ResultsLocation`: where a search keeps its results folder, a local folder or a bucket's prefix.

A search writes its own files (space.yaml, split.csv, search.json, trials.csv, ...) into a local
folder: the results folder itself, or, for results in a bucket, this machine's copy of it
(search/remote_results.py), which it uploads. Ray Tune writes the trials to `storage` either
way. This type answers "which local folder, where is a file, upload, fetch" in one place, so
that the rest of the search never asks whether its results are in a bucket.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from search import remote_results
from search.errors import UserError
from trainables.storage import remote


def storage_root(storage: str) -> str:
    """--storage as Ray is given it: a URI as it is (its bucket named and openable); a folder
    absolute, because trials run in Ray's own working directories. Raises UserError."""
    if re.match(r"^[a-z][a-z0-9+.-]*:/(?!/)", storage):  # s3:/bucket: a URI with one slash, not a folder 's3:'
        raise UserError(f"--storage {storage}: a URI takes two slashes, e.g. s3://BUCKET/PREFIX")
    if remote.is_uri(storage):
        try:  # a URI pyarrow cannot open (or one naming no bucket) is refused here, before anything runs
            remote.split(storage)
        except remote.StorageError as e:
            raise UserError(f"--storage {e}") from None
        return storage.rstrip("/")
    return str(Path(storage).expanduser().resolve())


def under(results: str, name: str) -> str:
    """RESULTS/NAME, for a folder or a URI."""
    return remote.join(results, name) if remote.is_uri(results) else str(Path(results) / name)


@dataclass(frozen=True)
class ResultsLocation:
    storage: str  # what Ray Tune is given (storage_root): the results are STORAGE/NAME
    name: str

    @classmethod
    def of(cls, storage: str, name: str) -> ResultsLocation:
        return cls(storage_root(storage), name)

    @property
    def results(self) -> str:
        """The results folder, or its URI."""
        return under(self.storage, self.name)

    @property
    def in_bucket(self) -> bool:
        return remote.is_uri(self.storage)

    @property
    def local(self) -> Path:
        """The folder the search writes its own files into: the results folder, or this machine's copy."""
        return remote_results.local_copy(self.results) if self.in_bucket else Path(self.results)

    def under(self, name: str) -> str:
        """A file or folder of the results, as the trials (on any node) find it."""
        return under(self.results, name)

    def check_writable(self) -> None:
        """A bucket's prefix must take writes (a folder is made when the search starts). Raises
        remote.StorageError."""
        if self.in_bucket:
            remote.check_writable(self.results)

    def fetch(self) -> Path:
        """Bring the local folder up to date with the bucket (a folder: nothing to do); return it.
        Raises remote.StorageError."""
        return remote_results.pull(self.results) if self.in_bucket else self.local

    def upload(self, names: list[str]) -> None:
        """Upload NAMES (files of the local folder) to the bucket; a folder has them already.
        Raises remote.StorageError."""
        if self.in_bucket:
            remote_results.push(self.local, self.results, names)

    def describe(self) -> str:
        """'results: RESULTS', with the local copy of a bucket's."""
        return f"results: {self.results}" + (f" (this machine's copy: {self.local})" if self.in_bucket else "")
