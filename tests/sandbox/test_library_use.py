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
