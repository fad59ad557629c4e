"""A real S3-compatible server on the loopback address for the object-storage tests: moto in
server mode (`python -m moto.server`), started in a process group of its own and killed by PID.

`s3_server()` yields the environment a process needs to use it as any AWS user would
(`AWS_ENDPOINT_URL`, credentials, region); with `users=True` the server checks credentials
(moto's IAM), and the environment of a read-only user is also given. With `switch=True` the
processes reach it through `Switch`, a TCP proxy on a port of its own that the test turns off
(the port refuses connections, open ones are cut: an outage) and on again (the same port, and
the same bucket contents behind it, as a restarted server with durable storage).
"""
from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
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


class Switch:
    """A TCP proxy on 127.0.0.1:PORT to the server at TARGET_PORT, switched off and on by the test.

    Off: the port refuses new connections and every open one is reset, as when the server
    process stops. On: the same port listens again. It runs in threads of the test's process."""

    def __init__(self, target_port: int):
        self.port, self.target = _free_port(), target_port
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self.on()

    @property
    def is_on(self) -> bool:
        return self._listener is not None

    def on(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def off(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.shutdown(socket.SHUT_RDWR)  # wakes accept(); the port now refuses connections
            listener.close()
        with self._lock:
            conns, self._conns = self._conns, set()
        for c in conns:
            self._reset(c)

    @staticmethod
    def _reset(c: socket.socket) -> None:
        try:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with RST
            c.close()
        except OSError:
            pass

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # switched off
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                self._reset(client)
                continue
            with self._lock:
                if self._listener is not listener:  # switched off meanwhile
                    for c in (client, server):
                        self._reset(c)
                    continue
                self._conns |= {client, server}
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        with self._lock:
            self._conns -= {src, dst}
        for s in (src, dst):
            try:
                s.close()
            except OSError:
                pass


@contextmanager
def s3_server(bucket: str, users: bool = False, switch: bool = False):
    """Yield {"env": ..., "read_only_env": ... (users=True), "url": ..., "client": ...} with BUCKET
    created; with SWITCH, "switch" is the `Switch` that ENV's address goes through ("client",
    the test's own, reaches the server directly, also while the switch is off)."""
    import boto3

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ)
    if users:  # the three IAM calls that make the first user are let through; then every request is checked
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = "3"
    logs = Path(os.environ.get("HPO_CACHE_DIR") or tempfile.gettempdir())  # the tests' own temporary folder
    logs.mkdir(parents=True, exist_ok=True)
    log = open(logs / f"moto-{port}.log", "w")
    out: dict = {}
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    try:
        _wait_up(url, proc)
        out.update(url=url, env=_env(url, "testing", "testing"))
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
        if switch:
            proxy = out["switch"] = Switch(port)
            out["url"] = f"http://127.0.0.1:{proxy.port}"
            out["env"] = dict(out["env"], AWS_ENDPOINT_URL=out["url"])
        yield out
    finally:
        if out.get("switch"):
            out["switch"].off()
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
