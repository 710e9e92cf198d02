"""`ray job submit` of jobs/full.py to a local head started with `ray start --head`."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.cluster
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray(*args, env, timeout=300):
    return subprocess.run(
        [str(BIN / "ray"), *args], env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def head(tmp_path):
    port, dash = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["RAY_AUTH_MODE"] = "token"  # Ray 2.60's token auth: clients must say so
    # --block keeps every head process in this process group, so teardown can end exactly
    # this cluster (`ray stop` would also stop the test session's own Ray)
    proc = subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={port}",
            f"--dashboard-port={dash}",
            "--node-ip-address=127.0.0.1",
            # every port of its own: the test session's Ray already holds the defaults (its
            # dashboard agent on 52365 would leave this head without one: "No available agent")
            f"--dashboard-agent-listen-port={_free_port()}",
            f"--dashboard-agent-grpc-port={_free_port()}",
            f"--runtime-env-agent-port={_free_port()}",
            f"--metrics-export-port={_free_port()}",
            "--num-cpus=2",
            "--disable-usage-stats",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    address = f"http://127.0.0.1:{dash}"
    deadline = time.monotonic() + 120
    while _ray("job", "list", "--address", address, env=env, timeout=60).returncode != 0:
        if time.monotonic() > deadline or proc.poll() is not None:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("the Ray head did not come up")
        time.sleep(1)
    yield address, env
    # `ray start --block` takes ~30 s to wind down on SIGTERM; nothing of this throwaway
    # head needs a clean exit, so the group gets a few seconds, then SIGKILL
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)


def test_job_submit_runs_the_zero_shot_job_and_lists_it(head, tmp_path):
    address, env = head
    run = tmp_path / "run"
    deadline = time.monotonic() + 240
    attempts = 0
    while True:
        attempts += 1
        sub = _ray(
            "job", "submit", "--address", address, "--working-dir", ".", "--",
            sys.executable, "jobs/full.py", "--run-dir", str(run),
            "--set", "data.max_test=2", "--set", "models.smollm2.path=tiny-random-llama",
            "--set", "eval.max_tokens=8", "--stages", "zero_shot",
            env=env,
        )  # fmt: skip
        # a head that answers `job list` may still be starting its job agent
        if "No available agent" not in sub.stdout + sub.stderr or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert sub.returncode == 0, f"{attempts} attempts\n" + sub.stdout[-2000:] + sub.stderr[-2000:]
    assert "base_zero_shot pass@1 = 0.000 on 2 test problems" in sub.stdout
    results = json.loads((run / "eval" / "results.json").read_text())
    assert results["methods"]["base_zero_shot"]["n"] == 2
    assert "| `base_zero_shot` | 0.000 [0.000, 0.658] |" in (run / "report.md").read_text()
    listed = _ray("job", "list", "--address", address, env=env)
    assert (
        listed.returncode == 0 and "SUCCEEDED" in listed.stdout and "jobs/full.py" in listed.stdout
    )
