"""Results and images in a bucket, against a real S3 server on loopback (moto, tests/s3_server.py):
the one-line errors a user meets before Ray starts, and each node's copy of the images.

The search on two Ray nodes whose only shared state is the bucket is tests/test_multinode.py.
"""
from __future__ import annotations

import os

import pytest

from tests.conftest import ROOT, make_folder, search_cli
from tests.s3_server import s3_server, upload_folder

pytestmark = pytest.mark.timeout(300)
SMOKE = str(ROOT / "spaces" / "smoke.yaml")
FAST = ["--set", "search.num_samples=1"]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A server that checks credentials: an admin and a read-only user; images in s3://hpo/images/."""
    with s3_server("hpo", users=True) as server:
        folder = make_folder(tmp_path_factory.mktemp("imgs"), {"a": 12, "b": 12, "c": 12})
        (folder / "notes.txt").write_text("not an image")
        upload_folder(server["client"], folder, "hpo", "images")
        yield server


def _error_line(run) -> str:
    assert run.returncode == 2, run.stdout + run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr  # one line, no traceback
    return lines[0]


def test_a_missing_bucket_is_one_line(s3, tmp_path):
    run = search_cli([SMOKE, "--storage", "s3://no-such-bucket/results", *FAST], timeout=120, env=s3["env"])
    assert _error_line(run) == ("error: --storage s3://no-such-bucket/results/smoke: bucket 'no-such-bucket' "
                                "does not exist (check the name and the region)")
    run = search_cli([SMOKE, "--data", "s3://no-such-bucket/images/", "--storage", str(tmp_path), *FAST],
                     timeout=120, env=s3["env"])
    assert _error_line(run) == ("error: --data s3://no-such-bucket/images/: bucket 'no-such-bucket' does not "
                                "exist (check the name and the region)")


def test_a_missing_prefix_is_one_line(s3, tmp_path):
    run = search_cli([SMOKE, "--data", "s3://hpo/imgs/", "--storage", str(tmp_path), *FAST],
                     timeout=120, env=s3["env"])
    assert _error_line(run) == ("error: --data s3://hpo/imgs/: no objects under this prefix (give the prefix "
                                "that holds the class folders)")


def test_no_credentials_is_one_line(s3, tmp_path):
    env = {k: v for k, v in s3["env"].items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    run = search_cli([SMOKE, "--data", "s3://hpo/images/", "--storage", str(tmp_path), *FAST],
                     timeout=120, env=env)
    line = _error_line(run)
    assert line.startswith("error: --data s3://hpo/images/: no AWS credentials found: set AWS_ACCESS_KEY_ID"), line
    run = search_cli([SMOKE, "--storage", "s3://hpo/results", *FAST], timeout=120, env=env)
    assert _error_line(run).startswith("error: --storage s3://hpo/results/smoke: no AWS credentials found")


def test_wrong_credentials_are_one_line(s3, tmp_path):
    env = dict(s3["env"], AWS_ACCESS_KEY_ID="AKIAWRONGKEY00000000", AWS_SECRET_ACCESS_KEY="wrong")
    run = search_cli([SMOKE, "--data", "s3://hpo/images/", "--storage", str(tmp_path), *FAST],
                     timeout=120, env=env)
    line = _error_line(run)
    assert line.startswith("error: --data s3://hpo/images/: ") and "credentials" in line, line


def test_a_read_only_bucket_is_one_line_before_ray_starts(s3, tmp_path):
    """The reader may copy the images down, but not keep results in the bucket."""
    run = search_cli([SMOKE, "--data", "s3://hpo/images/", "--storage", "s3://hpo/results", *FAST],
                     timeout=120, env=s3["read_only_env"])
    assert _error_line(run) == ("error: --storage s3://hpo/results/smoke: cannot write there (access denied): "
                                "these credentials may read the bucket but not write it")
    assert "copying 36 images from s3://hpo/images/" in run.stdout  # the images were readable
    assert "Ray" not in run.stdout


def test_each_node_copies_the_images_once_and_again_when_one_changes(s3, tmp_path, monkeypatch):
    """The driver's copy follows the bucket (a changed object is fetched again, a removed one goes);
    a trial's copy holds the split's bytes, and refuses an image changed since the split."""
    from trainables import data, remote_images
    from trainables.images import DataError

    for k, v in s3["env"].items():
        if k.startswith("AWS_"):
            monkeypatch.setenv(k, v)
    client, uri = s3["client"], "s3://hpo/images/"
    index = data.prepare(uri, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=0, cache_dir=str(tmp_path / "driver"))
    assert index.location == uri and index.skipped == ["notes.txt"]
    assert len(index.items) == 36 and index.root == remote_images.local_root(uri, tmp_path / "driver")

    node = tmp_path / "node"  # another node: fetches only what it is asked for
    root = remote_images.fetch(uri, index.items[:5], node)
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*.png")) == sorted(it.path for it in index.items[:5])
    mtimes = {p: p.stat().st_mtime_ns for p in root.rglob("*.png")}
    remote_images.fetch(uri, index.items[:5], node)
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*.png")} == mtimes  # nothing fetched twice

    changed = index.items[0]
    client.put_object(Bucket="hpo", Key=f"images/{changed.path}", Body=(ROOT / "tests" / "data" / "chelsea.jpg")
                      .read_bytes())
    with pytest.raises(DataError, match=f"{changed.path}: changed in the bucket since the search split the data"):
        remote_images.fetch(uri, [index.items[1], changed], tmp_path / "node2")
    again = data.prepare(uri, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=0, cache_dir=str(tmp_path / "driver"))
    assert {it.path: it.sha1 for it in again.items}[changed.path] != changed.sha1  # fetched again, and rehashed
    assert os.path.getsize(again.root / changed.path) == (ROOT / "tests" / "data" / "chelsea.jpg").stat().st_size
    client.delete_object(Bucket="hpo", Key=f"images/{changed.path}")
    gone = data.prepare(uri, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=0, cache_dir=str(tmp_path / "driver"))
    assert len(gone.items) == 35 and not (gone.root / changed.path).exists()

