"""Object storage (`s3://`, `gs://`, anything pyarrow's file systems open) as the search uses it.

A search on a cluster without a shared file system keeps its results and reads its images in
a bucket. Ray Tune already writes trial results and checkpoints there through pyarrow
(`RunConfig(storage_path=URI)`); this module is what the search itself needs on top: list a
prefix, read and write small files, copy many files in parallel, and turn the storage's own
errors into one line that says what to fix.

Endpoints and credentials come from the usual places, as for every AWS tool: `AWS_ENDPOINT_URL`
(an S3-compatible server such as MinIO), `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`,
`AWS_PROFILE` and `~/.aws`, or the node's instance profile.

An S3 outage is waited out: every request (the search's own, and Ray Tune's uploads of results
and checkpoints, given `storage_filesystem`) is retried by the AWS SDK itself, backing off from
25 ms and doubling, for at least `OUTAGE_LIMIT_S` seconds (`HPO_STORAGE_OUTAGE_S` sets another
limit) before it fails. pyarrow's own defaults give up after about a second in the trial
processes (the file system Ray pickles to them comes back with 3 attempts) and 6 s in the
driver, so a restarting S3 server failed every trial that reported meanwhile.
"""
from __future__ import annotations

import functools
import hashlib
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

THREADS = 16  # parallel transfers: object stores answer each request slowly, many at once well
# How long (s) each request to an S3 bucket is retried while the storage does not answer, before
# the search stops (with one line saying to run it again with --resume; search/storage_watch.py).
# An outage shorter than this costs the search that long in waiting, up to twice as long: the
# retries back off from 25 ms, doubling, until their waits add up to the limit (102 s for 100).
# HPO_STORAGE_OUTAGE_S overrides it (the tests use a few seconds).
OUTAGE_LIMIT_S = 100.0
OUTAGE_ENV = "HPO_STORAGE_OUTAGE_S"
FIRST_RETRY_S = 0.025  # the AWS SDK's DefaultRetryStrategy: waits 25 ms * 2**k before retry k


class StorageError(ValueError):
    """A bucket or prefix that cannot be used as asked: the message is the one line to show."""


class StorageUnreachable(BaseException):
    """The storage did not answer for the whole outage limit: the search stops at once, with this
    message as its one line. A BaseException, as KeyboardInterrupt is: Tune's own clean-up would
    wait out the outage once more for each file it uploads at the end; --resume picks up from
    what the storage last received."""


def outage_limit_s() -> float:
    """OUTAGE_LIMIT_S, or HPO_STORAGE_OUTAGE_S where set."""
    raw = os.environ.get(OUTAGE_ENV)
    try:
        return float(raw) if raw else OUTAGE_LIMIT_S
    except ValueError:
        raise StorageError(f"{OUTAGE_ENV}={raw!r}: give seconds, e.g. {OUTAGE_ENV}=100") from None


def retry_attempts(limit_s: float) -> int:
    """Attempts of a request whose doubling waits (25 ms, 50 ms, ...) add up to LIMIT_S or more."""
    attempts = 2
    while FIRST_RETRY_S * (2 ** attempts - 2) < limit_s:
        attempts += 1
    return attempts


# what the AWS SDK's error says when the storage did not answer (connection refused, reset or
# timed out), as opposed to an answer that refuses the request (no bucket, access denied)
UNREACHABLE_MARKS = ("NETWORK_CONNECTION", "Could not connect", "curlCode: 7,", "curlCode: 28,",
                     "curlCode: 52,", "curlCode: 55,", "curlCode: 56,", "REQUEST_TIMEOUT")


def unreachable(text: str) -> bool:
    """Whether an error's text says the storage did not answer."""
    return any(mark in text for mark in UNREACHABLE_MARKS)


def is_uri(path) -> bool:
    return "://" in str(path)


def join(uri: str, *parts: str) -> str:
    """URI/part/...; a query string (`?endpoint_override=...`) stays at the end."""
    base, q, query = uri.partition("?")
    for p in parts:
        base = base.rstrip("/") + "/" + str(p).strip("/")
    return base + q + query


def copy_name(uri: str) -> str:
    """A folder name for this machine's copy of URI: readable (the URI's end), and one per URI."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", uri.split("://", 1)[-1].partition("?")[0]).strip("-")[-60:]
    return f"{name}-{hashlib.sha1(uri.encode()).hexdigest()[:10]}"


def scheme(uri: str) -> str:
    return uri.split("://", 1)[0].lower()


@functools.lru_cache(maxsize=16)
def _filesystem(root: str):
    return storage_filesystem(root)


def storage_filesystem(root: str):
    """The pyarrow file system of ROOT (`s3://bucket`, `gs://bucket`, ...): for S3, one that
    waits out an outage (see OUTAGE_LIMIT_S) and keeps doing so in the processes it is pickled to."""
    from pyarrow import fs

    f = fs.FileSystem.from_uri(root)[0]
    if isinstance(f, fs.S3FileSystem):
        return _patient_s3(f.__reduce__()[1][0], retry_attempts(outage_limit_s()))
    return f


def ray_storage(uri: str) -> tuple[str, object]:
    """(storage_path, storage_filesystem) to give Ray for URI (a folder: itself, and None)."""
    if not is_uri(uri):
        return uri, None
    f, path = split(uri)
    return path, f


def _patient_s3(options: dict, attempts: int):
    """pyarrow's S3FileSystem with OPTIONS (its own pickled form) and the AWS SDK's default retry
    strategy with ATTEMPTS; pickled with both (pyarrow's own pickle drops the retry strategy)."""
    return _patient_class()(options, attempts)


@functools.lru_cache(maxsize=1)
def _patient_class():
    from pyarrow import fs

    class PatientS3FileSystem(fs.S3FileSystem):
        def __init__(self, options: dict, attempts: int):
            super().__init__(**options, retry_strategy=fs.AwsDefaultS3RetryStrategy(max_attempts=attempts))
            self._options, self._attempts = options, attempts

        def __reduce__(self):
            return _patient_s3, (self._options, self._attempts)

    return PatientS3FileSystem


BUCKET_SCHEMES = ("s3", "s3a", "gs", "gcs")  # where the first part of the path is the bucket


def split(uri: str):
    """(pyarrow file system, path in it) for URI; the file system is made once per bucket (making
    one may ask the store for the bucket's region)."""
    base, _, query = uri.partition("?")
    sch, rest = base.split("://", 1)
    root = f"{sch}://{rest.split('/', 1)[0]}" + (f"?{query}" if query else "")
    if sch.lower() in BUCKET_SCHEMES and not rest.split("/", 1)[0]:
        raise StorageError(f"{uri}: no bucket named; give {sch}://BUCKET/PREFIX")
    try:
        if sch.lower() in BUCKET_SCHEMES:
            return _filesystem(root), rest.rstrip("/")
        from pyarrow import fs

        f, path = fs.FileSystem.from_uri(uri)
        return f, path.rstrip("/")
    except OSError as e:
        raise StorageError(explain(uri, e)) from None
    except (ValueError, TypeError) as e:
        raise StorageError(f"{uri}: not a storage URI pyarrow can open ({_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    text = re.sub(r"\s*\(Request ID: [^)]*\)", "", str(e)).strip().splitlines()
    return text[0] if text else type(e).__name__


def credentials_problem() -> str | None:
    """What keeps the AWS credential chain from giving credentials, or None when it gives some.

    botocore's own resolver walks the chain as every AWS tool does (environment, shared files,
    SSO, web identity, container, instance metadata), and is kept in step with AWS's changes.
    Checked before the first request, because without credentials the S3 client retries for
    seconds and then reports an unrelated error."""
    import botocore.exceptions
    import botocore.session

    try:
        found = botocore.session.get_session().get_credentials()
    except botocore.exceptions.BotoCoreError as e:  # e.g. AWS_PROFILE names no profile
        return f"AWS credentials: {_first_line(e)}"
    return None if found is not None else NO_CREDENTIALS


NO_CREDENTIALS = ("no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, "
                  "or run on a node with an instance profile (cluster.yaml gives the nodes one)")


def explain(uri: str, e: BaseException) -> str:
    """One line for a storage error: what is wrong with URI, not the client's call stack."""
    text = str(e)
    bucket = uri.split("://", 1)[-1].split("/", 1)[0]
    if any(code in text for code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "INVALID_ACCESS_KEY",
                                     "SIGNATURE_DOES_NOT_MATCH", "ExpiredToken", "InvalidToken")):
        return f"{uri}: the credentials are not valid for this storage ({_first_line(e)})"
    if any(code in text for code in ("NO_SUCH_BUCKET", "NoSuchBucket", "bucket does not exist",
                                     f"Bucket '{bucket}' not found")):
        return f"{uri}: bucket {bucket!r} does not exist (check the name and the region)"
    if any(code in text for code in ("ACCESS_DENIED", "AccessDenied", "HTTP status 403")):
        return f"{uri}: access denied; these credentials may not use bucket {bucket!r}"
    return f"{uri}: {_first_line(e)}"


def check_credentials(uri: str) -> None:
    problem = credentials_problem() if scheme(uri) in ("s3", "s3a") else None
    if problem:
        raise StorageError(f"{uri}: {problem}")


def listing(uri: str) -> dict[str, tuple[int, int]]:
    """Every object under URI as {path relative to it: (size, mtime in ns)}; {} for a missing prefix."""
    from pyarrow import fs

    check_credentials(uri)
    f, path = split(uri)
    try:  # allow_not_found would also hide a missing bucket
        infos = f.get_file_info(fs.FileSelector(path, recursive=True))
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise StorageError(explain(uri, e)) from None
    out = {}
    for i in infos:
        if i.type == fs.FileType.File:
            mtime = i.mtime_ns if i.mtime_ns is not None else 0
            out[i.path[len(path):].lstrip("/")] = (int(i.size or 0), int(mtime))
    return out


def check_writable(uri: str) -> None:
    """Write and remove a small object under URI: a missing bucket, missing or invalid credentials
    and read-only access are found here, before a search starts, not at its first checkpoint."""
    from pyarrow import fs

    check_credentials(uri)
    f, path = split(uri)
    try:  # a missing bucket first: writing to one is "access denied" on some stores
        f.get_file_info(fs.FileSelector(path))
    except FileNotFoundError:
        pass
    except OSError as e:
        raise StorageError(explain(uri, e)) from None
    probe = path + "/.hpo-write-check"
    try:
        with f.open_output_stream(probe) as out:
            out.write(b"hpo-finetune checks that it may write here; this object is removed at once\n")
    except OSError as e:
        raise _denied(uri, e, "cannot write there (access denied): these credentials may read the bucket but not "
                              "write it") from None
    try:
        f.delete_file(probe)
    except OSError as e:
        raise _denied(uri, e, "cannot delete there (access denied): the search removes checkpoints beyond "
                              "checkpoint.keep; these credentials may write but not delete") from None


def _denied(uri: str, e: OSError, denied: str) -> StorageError:
    """DENIED where the store refused access, else what `explain` says."""
    why = explain(uri, e)
    return StorageError(f"{uri}: {denied}" if ": access denied; " in why else why)


def read_bytes(uri: str) -> bytes:
    f, path = split(uri)
    try:
        with f.open_input_stream(path) as src:
            return src.read()
    except FileNotFoundError:
        raise StorageError(f"{uri}: no such object") from None
    except OSError as e:
        raise StorageError(explain(uri, e)) from None


def write_bytes(uri: str, data: bytes) -> None:
    f, path = split(uri)
    try:
        with f.open_output_stream(path) as out:
            out.write(data)
    except OSError as e:
        raise StorageError(explain(uri, e)) from None


def download(uri: str, paths: list[str], dest: Path, each=None, threads: int = THREADS,
             versions: dict[str, int] | None = None) -> None:
    """Copy URI/path to DEST/path for every path, in parallel; each file appears whole (written
    to a temporary name, then renamed). EACH(path, bytes) runs on every file's bytes (hashing,
    progress) before it is written, and may raise to refuse it. VERSIONS gives each copy the
    object's mtime (ns)."""
    f, base = split(uri)

    def one(rel: str) -> None:
        target = dest / rel
        try:
            with f.open_input_stream(f"{base}/{rel}") as src:
                raw = src.read()
            mtime = (versions or {}).get(rel)
        except OSError as e:
            raise StorageError(explain(join(uri, rel), e)) from None
        if each is not None:
            each(rel, raw)
        tmp = target.with_name(f".{target.name}.part{os.getpid()}")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(raw)
            if mtime:  # the copy carries the object's time: a later listing tells whether it changed
                os.utime(tmp, ns=(mtime, mtime))
            os.replace(tmp, target)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise StorageError(f"{target}: cannot write the copy of {join(uri, rel)} ({e.strerror or e})") from None

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(one, paths))


def upload(local: Path, paths: list[str], uri: str, threads: int = THREADS) -> None:
    """Copy LOCAL/path to URI/path for every path, in parallel."""
    f, base = split(uri)

    def one(rel: str) -> None:
        try:
            with f.open_output_stream(f"{base}/{rel}") as out:
                out.write((local / rel).read_bytes())
        except OSError as e:
            raise StorageError(explain(join(uri, rel), e)) from None

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(one, paths))


def filesystem(location: str):
    """(pyarrow file system, path) for a URI or a local folder: code that works on both."""
    if is_uri(location):
        return split(location)
    from pyarrow import fs

    return fs.LocalFileSystem(), str(Path(location).resolve())
