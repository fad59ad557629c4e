"""A real S3-compatible server on the loopback address for the object-storage tests: moto in
server mode (`python -m moto.server`), started in a process group of its own and killed by PID.

`s3_server()` yields the environment a process needs to use it as any AWS user would
(`AWS_ENDPOINT_URL`, credentials, region); with `users=True` the server checks credentials
(moto's IAM), and the environment of a read-only user is also given.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import kill_group

READ_ONLY_POLICY = {"Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Action": ["s3:Get*", "s3:List*"], "Resource": "*"}]}
ALL_POLICY = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_up(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "the S3 server exited at start"
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=2).close()
            return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"the S3 server at {url} did not answer")


def _env(url: str, key: str, secret: str) -> dict:
    return dict(os.environ, AWS_ENDPOINT_URL=url, AWS_ACCESS_KEY_ID=key, AWS_SECRET_ACCESS_KEY=secret,
                AWS_DEFAULT_REGION="us-east-1", AWS_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")


def _user(iam, name: str, policy: dict) -> tuple[str, str]:
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName=name, PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


@contextmanager
def s3_server(bucket: str, users: bool = False):
    """Yield {"env": ..., "read_only_env": ... (users=True), "url": ...} with BUCKET created."""
    import boto3

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ)
    if users:  # the three IAM calls that make the first user are let through; then every request is checked
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = "3"
    logs = Path(os.environ.get("HPO_CACHE_DIR") or tempfile.gettempdir())  # the tests' own temporary folder
    logs.mkdir(parents=True, exist_ok=True)
    log = open(logs / f"moto-{port}.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    try:
        _wait_up(url, proc)
        out = {"url": url, "env": _env(url, "testing", "testing")}
        if users:
            first = boto3.client("iam", endpoint_url=url, region_name="us-east-1",
                                 aws_access_key_id="x", aws_secret_access_key="x")
            admin = _user(first, "admin", ALL_POLICY)
            iam = boto3.client("iam", endpoint_url=url, region_name="us-east-1",
                               aws_access_key_id=admin[0], aws_secret_access_key=admin[1])
            out["env"] = _env(url, *admin)
            out["read_only_env"] = _env(url, *_user(iam, "reader", READ_ONLY_POLICY))
        s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                          aws_access_key_id=out["env"]["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=out["env"]["AWS_SECRET_ACCESS_KEY"])
        s3.create_bucket(Bucket=bucket)
        out["client"] = s3
        yield out
    finally:
        kill_group(proc.pid)
        proc.wait(timeout=30)
        log.close()


def upload_folder(client, folder: Path, bucket: str, prefix: str) -> int:
    """Every file under FOLDER to s3://BUCKET/PREFIX/, in parallel; returns how many."""
    from concurrent.futures import ThreadPoolExecutor

    files = [p for p in sorted(folder.rglob("*")) if p.is_file()]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda p: client.upload_file(str(p), bucket, f"{prefix}/{p.relative_to(folder).as_posix()}"),
                      files))
    return len(files)
