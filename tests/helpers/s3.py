"""An S3-compatible server on 127.0.0.1 (moto's server mode) for run-storage tests: started in
its own process, reached through the usual AWS environment variables, stopped after."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def s3_server(
    buckets: tuple[str, ...] = ("bdc",), check_keys: bool = False
) -> Iterator[dict[str, str]]:
    """Yields the environment a client needs (also set in os.environ while it runs).
    `check_keys`: once the buckets exist the server checks credentials as AWS does, and knows
    none, so every key is refused (a store reached with wrong or missing credentials)."""
    port = _free_port()
    server_env = dict(os.environ)
    if check_keys:  # moto's switch: requests after the first N are authenticated
        server_env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(len(buckets))
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=server_env,
    )
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:  # a connection, not a request: requests count against check_keys' allowance
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the S3 test server did not start") from None
                time.sleep(0.2)
        for bucket in buckets:
            req = urllib.request.Request(f"{env['AWS_ENDPOINT_URL']}/{bucket}", method="PUT")
            urllib.request.urlopen(req, timeout=10)
        yield env
    finally:
        proc.kill()
        proc.wait()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
