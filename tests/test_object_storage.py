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
    run = search_cli([SMOKE, "--storage", "s3://", *FAST], timeout=120, env=s3["env"])
    assert _error_line(run) == "error: --storage s3://: no bucket named; give s3://BUCKET/PREFIX"


@pytest.mark.timeout(120)
def test_a_uri_with_one_slash_is_one_line_not_a_folder():
    """`s3:/bucket` once wrote results into a local folder named `s3:`."""
    run = search_cli([SMOKE, "--storage", "s3:/hpo/results", *FAST], timeout=100)
    assert _error_line(run) == "error: --storage s3:/hpo/results: a URI takes two slashes, e.g. s3://BUCKET/PREFIX"
    assert not (ROOT / "s3:").exists()


def test_no_credentials_is_one_line(s3, tmp_path):
    env = {k: v for k, v in s3["env"].items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    run = search_cli([SMOKE, "--data", "s3://hpo/images/", "--storage", str(tmp_path), *FAST],
                     timeout=120, env=env)
    line = _error_line(run)
    assert line.startswith("error: --data s3://hpo/images/: no AWS credentials found: set AWS_ACCESS_KEY_ID"), line
    run = search_cli([SMOKE, "--storage", "s3://hpo/results", *FAST], timeout=120, env=env)
    assert _error_line(run).startswith("error: --storage s3://hpo/results/smoke: no AWS credentials found")


def test_a_profile_that_does_not_exist_is_one_line(s3, tmp_path):
    """The credential chain is botocore's: a named profile it cannot find is said in one line."""
    env = {k: v for k, v in s3["env"].items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    run = search_cli([SMOKE, "--data", "s3://hpo/images/", "--storage", str(tmp_path), *FAST],
                     timeout=120, env=dict(env, AWS_PROFILE="no-such-profile"))
    assert _error_line(run) == ("error: --data s3://hpo/images/: AWS credentials: The config profile "
                                "(no-such-profile) could not be found")


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
    from trainables.data import dataset, remote_images
    from trainables.data.images import DataError

    for k, v in s3["env"].items():
        if k.startswith("AWS_"):
            monkeypatch.setenv(k, v)
    client, uri = s3["client"], "s3://hpo/images/"
    index = dataset.prepare(uri, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=0, cache_dir=str(tmp_path / "driver"))
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
    again = dataset.prepare(uri, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=0, cache_dir=str(tmp_path / "driver"))
    assert {it.path: it.sha1 for it in again.items}[changed.path] != changed.sha1  # fetched again, and rehashed
    assert os.path.getsize(again.root / changed.path) == (ROOT / "tests" / "data" / "chelsea.jpg").stat().st_size
    client.delete_object(Bucket="hpo", Key=f"images/{changed.path}")
    gone = dataset.prepare(uri, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=0, cache_dir=str(tmp_path / "driver"))
    assert len(gone.items) == 35 and not (gone.root / changed.path).exists()



def test_resume_makes_a_killed_drivers_trials_agree_with_tunes_last_saved_state(s3, tmp_path, monkeypatch):
    """A driver killed between Tune writing reports and checkpoints and Tune saving its state:
    result.json keeps the rows up to the state's last report, the checkpoints after it go (the
    resumed trial writes its own under those names), and a removed restore checkpoint comes back
    as a copy of the trial's newest. A finished trial is left as it is."""
    import json

    from search import resume_checkpoints

    for k, v in s3["env"].items():
        if k.startswith("AWS_"):
            monkeypatch.setenv(k, v)
    client, results = s3["client"], "s3://hpo/results/killed"

    def state(trial: str, status: str, epoch: int) -> list[str]:  # one trial_data entry, as Ray 2.60 writes it
        last = {"epoch": epoch, "checkpoint_dir_name": f"checkpoint_{epoch - 1:06d}"}
        return [json.dumps({"trial_id": trial, "status": status, "relative_logdir": f"trial_{trial}"}),
                json.dumps({"last_result": last})]

    def put(key: str, body: bytes) -> None:
        client.put_object(Bucket="hpo", Key=f"results/killed/{key}", Body=body)

    def rows(epochs) -> bytes:
        return "".join(json.dumps({"epoch": e, "checkpoint_dir_name": f"checkpoint_{e - 1:06d}"}) + "\n"
                       for e in epochs).encode()

    local = tmp_path / "copy"
    local.mkdir()
    (local / "experiment_state-2026-12-01_00-00-00.json").write_text(json.dumps({"trial_data": [
        state("gone", "RUNNING", 5), state("kept", "PAUSED", 5), state("done", "TERMINATED", 2)]}))
    for trial, epochs in (("gone", [3, 6, 7]), ("kept", [5, 6]), ("done", [9])):
        put(f"trial_{trial}/result.json", rows(range(1, max(epochs) + 1)))
        for e in epochs:
            put(f"trial_{trial}/checkpoint_{e - 1:06d}/model.pt", f"epoch {e}".encode())

    said = resume_checkpoints.reconcile(results, local)
    assert said == ["trial_gone: the checkpoint Tune last saved, checkpoint_000004, was removed after; it "
                    "continues from its newest, checkpoint_000006",
                    "trial_gone: 2 report(s) after Tune's last saved state are reported again",
                    "trial_kept: 1 report(s) after Tune's last saved state are reported again"]
    keys = {o["Key"][len("results/killed/"):] for o in
            client.list_objects_v2(Bucket="hpo", Prefix="results/killed/")["Contents"]}
    assert {k for k in keys if "checkpoint" in k} == {
        "trial_gone/checkpoint_000002/model.pt", "trial_gone/checkpoint_000004/model.pt",
        "trial_kept/checkpoint_000004/model.pt", "trial_done/checkpoint_000008/model.pt"}
    body = client.get_object(Bucket="hpo", Key="results/killed/trial_gone/checkpoint_000004/model.pt")["Body"]
    assert body.read() == b"epoch 7"  # the newest, under the name Tune restores from
    for trial, last in (("gone", 5), ("kept", 5), ("done", 9)):
        got = client.get_object(Bucket="hpo", Key=f"results/killed/trial_{trial}/result.json")["Body"].read()
        assert got == rows(range(1, last + 1)), trial
    assert resume_checkpoints.reconcile(results, local) == []  # mended once


def test_a_results_copy_follows_the_bucket(s3, tmp_path, monkeypatch):
    """This machine's copy of a bucket's results: fetched when missing or changed, dropped when gone
    from the bucket, checkpoints only when asked; the journal is kept where the copy's is longer
    (the driver appends to it faster than it uploads)."""
    from search import remote_results

    for k, v in s3["env"].items():
        if k.startswith("AWS_"):
            monkeypatch.setenv(k, v)
    monkeypatch.setenv("HPO_CACHE_DIR", str(tmp_path / "cache"))
    client, uri = s3["client"], "s3://hpo/results/copied"

    def put(key: str, body: bytes) -> None:
        client.put_object(Bucket="hpo", Key=f"results/copied/{key}", Body=body)

    put("search.json", b"{}")
    put("trial_a/result.json", b"1\n")
    put("trial_a/checkpoint_000000/model.pt", b"weights")
    put("optuna.journal", b"a\n")
    local = remote_results.pull(uri)
    assert sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()) == [
        "optuna.journal", "search.json", "trial_a/result.json"]
    (local / "optuna.journal").write_bytes(b"a\nb\nc\n")  # the driver's, ahead of the bucket's
    put("trial_a/result.json", b"1\n2\n")
    client.delete_object(Bucket="hpo", Key="results/copied/search.json")
    assert remote_results.pull(uri, checkpoints=True) == local
    assert (local / "trial_a" / "result.json").read_bytes() == b"1\n2\n"
    assert (local / "trial_a" / "checkpoint_000000" / "model.pt").read_bytes() == b"weights"
    assert not (local / "search.json").exists() and (local / "optuna.journal").read_bytes() == b"a\nb\nc\n"
    remote_results.push(local, uri, ["optuna.journal"])
    (local / "optuna.journal").write_bytes(b"a\nb\nc\nhalf a li")  # caught mid-append: up to the last whole line
    remote_results.push(local, uri, ["optuna.journal"])
    body = client.get_object(Bucket="hpo", Key="results/copied/optuna.journal")["Body"].read()
    assert body == b"a\nb\nc\n"
