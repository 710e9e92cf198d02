"""The sandbox as an ordinary user: the same suites, with no privilege at all (the documented
cluster runs Ray as `ubuntu`). The sandbox builds its isolation in a user namespace of its
own; a layer the kernel refuses there makes it refuse to run rather than run weaker."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv"),
    reason="needs root to set up an ordinary user's view of this interpreter, and setpriv",
)


def test_the_hostile_suites_pass_as_an_ordinary_user():
    home = tempfile.mkdtemp(prefix="bdc-nobody-")
    os.chown(home, 65534, 65534)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": home,
        "TMPDIR": home,
        "PYTHONPATH": str(REPO),
        "PYTHONDONTWRITEBYTECODE": "1",
        "LANG": "C.UTF-8",
    }
    suites = ["tests/sandbox/test_kernel_boundaries.py", "tests/sandbox/test_hostile.py"]
    cmd = [sys.executable, "-m", "tests.helpers.unprivileged", sys.executable, "-m", "pytest",
           "-q", "-p", "no:cacheprovider", f"--basetemp={home}/pt", *suites]  # fmt: skip
    try:
        out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert " passed" in out.stdout and "skipped" not in out.stdout.splitlines()[-1], out.stdout[
        -500:
    ]
