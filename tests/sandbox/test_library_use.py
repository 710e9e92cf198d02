"""Ordinary programs use more of the library than the template preloads, and some of it asks
for frames, which the sandbox refuses: both must work as they do outside it."""

import os

from bdc_ray.data import TestCase
from bdc_ray.sandbox import zygote

PROGRAM = """
import calendar, csv, io, logging, queue, shutil, sqlite3, tempfile, warnings
from collections import namedtuple
from enum import Enum
from typing import Generic, NamedTuple, TypeVar

T = TypeVar("T")
Point = namedtuple("Point", "x y")
Color = Enum("Color", "RED GREEN")


class Pair(NamedTuple):
    a: int
    b: int


class Box(Generic[T]):
    def __init__(self, item: T) -> None:
        self.item = item


def f(x):
    warnings.warn("only a warning")
    logging.getLogger("program").warning("logged %d", x)
    q = queue.Queue()
    q.put(Point(x, 2).x + Pair(3, 4).b)
    rows = list(csv.reader(io.StringIO("a,b\\n1,2\\n")))
    with tempfile.TemporaryDirectory() as d:
        with open(d + "/a", "w") as out:
            out.write("x")
        shutil.copyfile(d + "/a", d + "/b")
        made = os.path.getsize(d + "/b") == 1
    return [q.get(), Color.RED.value, Box(5).item, calendar.isleap(2024), rows[1], made]
"""


def test_modules_the_template_did_not_preload_import_and_frame_asking_library_code_runs(
    sandbox,
):
    program = "import os\n" + PROGRAM
    result = sandbox.check_function(
        program,
        "f",
        [TestCase("assert", code="assert candidate(1) == [5, 1, 5, True, ['1', '2'], True]")],
    )
    assert result.passed, result.tests[0].feedback
    assert "only a warning" in result.stderr and "logged 1" in result.stderr, result.stderr


def test_a_closed_folder_holding_the_interpreter_shows_runs_that_tree_only(sandbox):
    """Where the interpreter lies under a folder others may not enter (a pyenv Python under
    /root), runs see that folder with the interpreter's tree in it and nothing else."""
    exposed = sandbox.isolation.get("interpreter_exposed")
    if not exposed:  # nothing was closed (or no mount namespace): nothing to hide either
        return
    top = zygote._blocked_ancestor(exposed[0])
    shown = sorted({t[len(top) + 1 :].split(os.sep)[0] for t in exposed if t.startswith(top)})
    assert set(os.listdir(top)) > set(shown)  # the host's folder holds more than that
    probe = f"import os\ndef f(x):\n    return sorted(os.listdir({top!r}))\n"
    result = sandbox.check_function(
        probe, "f", [TestCase("assert", code=f"assert candidate(0) == {shown!r}")]
    )
    assert result.passed, result.tests[0].feedback


CLOSED_PROBE = r"""
import ctypes, json, os, sys
from bdc_ray.sandbox import zygote
closed, tree = sys.argv[1], sys.argv[2]
libc = ctypes.CDLL(None, use_errno=True)
assert libc.unshare(zygote.CLONE_NEWNS) == 0
assert libc.mount(None, b"/", None, zygote.MS_REC | zygote.MS_PRIVATE, None) == 0
exposed = zygote.expose_interpreter([tree])
r, w = os.pipe()
pid = os.fork()
if pid == 0:  # a run: its own uid
    os.setgroups([]); os.setresgid(62099, 62099, 62099); os.setresuid(62099, 62099, 62099)
    seen = {"listing": sorted(os.listdir(closed))}
    try:
        seen["module"] = open(os.path.join(tree, "mod.py")).read()
    except OSError as e:
        seen["module"] = repr(e)
    os.write(w, json.dumps(seen).encode()); os._exit(0)
os.close(w); os.waitpid(pid, 0)
print(json.dumps({"exposed": exposed, **json.loads(os.read(r, 65536))}))
"""


def test_a_tree_under_a_closed_folder_is_exposed_to_runs_alone(tmp_path):
    """The mechanism behind `interpreter_exposed`, on a folder of our own: a run (another
    uid) cannot enter a 0700 folder; once exposed it reads the tree, and only that tree."""
    import json
    import subprocess
    import sys

    import pytest

    if os.geteuid() != 0:
        pytest.skip("needs root (mount namespaces, another uid)")
    closed = tmp_path / "closed"
    (closed / "lib" / "tree").mkdir(parents=True)
    (closed / "lib" / "tree" / "mod.py").write_text("VALUE = 1\n")
    (closed / "secret.txt").write_text("do not read\n")
    closed.chmod(0o700)
    tmp_path.chmod(0o755)
    tree = str(closed / "lib" / "tree")
    out = subprocess.run(
        [sys.executable, "-c", CLOSED_PROBE, str(closed), tree],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if out.returncode != 0 and "unshare" in out.stderr:
        pytest.skip("no mount namespaces here")
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["exposed"] == [tree]
    assert got["listing"] == ["lib"]  # secret.txt is hidden, not merely unreadable
    assert got["module"] == "VALUE = 1\n"
    assert (closed / "secret.txt").read_text() == "do not read\n"  # the host is untouched
