"""The template's caches: tests compiled once per template, module snapshots taken once.

Both live in the template (the parent of every run) and are inherited through fork; these
tests check what they hold and that a stale or broken entry never changes a verdict."""

import sys
import types

from bdc_ray.data import TestCase
from bdc_ray.sandbox import child


def _req(tests, prompt="def helper():\n    return 1\n", program="def f(x):\n    return x\n"):
    return {
        "kind": "function",
        "program": program,
        "prompt": prompt,
        "preamble": "import math",
        "tests": [{"code": t, "setup": []} for t in tests],
    }


def test_precompile_caches_trusted_sources_and_never_the_program():
    program = "def f(x):\n    return x + 12345\n"
    req = _req(["assert candidate(1) == 1", "assert candidate(2) == 2"], program=program)
    child._CODE_CACHE.clear()
    child.precompile(req)
    code = child._CODE_CACHE[("assert candidate(1) == 1", "<test>")]
    assert child._compile("assert candidate(1) == 1", "<test>") is code
    assert ("def helper():\n    return 1\n", "<prompt>") in child._CODE_CACHE
    assert ("import math", "<test>") in child._CODE_CACHE
    assert all(src != program for src, _ in child._CODE_CACHE)
    child.precompile(req)  # a second run of the problem: the same code objects
    assert child._CODE_CACHE[("assert candidate(1) == 1", "<test>")] is code
    # stdin/stdout runs carry no trusted code to compile
    child.precompile({"kind": "stdio", "program": program})
    assert all(src != program for src, _ in child._CODE_CACHE)


def test_a_test_that_does_not_compile_is_left_to_the_run():
    child._CODE_CACHE.clear()
    child.precompile(_req(["assert candidate(1) ==", "assert candidate(2) == 2"]))
    assert ("assert candidate(1) ==", "<test>") not in child._CODE_CACHE
    assert ("assert candidate(2) == 2", "<test>") in child._CODE_CACHE


def test_a_broken_test_in_the_sandbox_is_an_error_and_the_next_run_is_unaffected(sandbox):
    program = "def f(x):\n    return x\n"
    bad = sandbox.check_function(program, "f", [TestCase("assert", code="assert f(1) ==")])
    assert not bad.passed and bad.status == "error"
    good = [
        TestCase("assert", code="assert f(1) == 1"),
        TestCase("assert", code="assert f(2) == 2"),
    ]
    for _ in range(2):  # the second run takes the compiled tests from the template's cache
        ok = sandbox.check_function(program, "f", good)
        assert ok.passed, ok.feedback()
    wrong = sandbox.check_function("def f(x):\n    return -x\n", "f", good)
    assert [t.status for t in wrong.tests] == ["failed", "failed"]


def test_a_snapshot_is_reused_only_while_the_module_is_unchanged():
    mod = types.ModuleType("bdc_snapshot_probe")
    mod.value = 1
    sys.modules[mod.__name__] = mod
    try:
        child.presnapshot([mod.__name__])
        first = child._snapshot_modules([mod.__name__])
        assert first[mod.__name__] is child._SNAPSHOTS[mod.__name__]
        mod.value = 2  # changed after the template's snapshot: a run must see (and keep) 2
        second = child._snapshot_modules([mod.__name__])
        assert second[mod.__name__] is not child._SNAPSHOTS[mod.__name__]
        mod.value = 3  # what a program would do; restoring gives the state the run started with
        child._restore_modules(second)
        assert mod.value == 2
    finally:
        sys.modules.pop(mod.__name__, None)
        child._SNAPSHOTS.clear()


def test_what_the_template_sets_once_every_run_still_has(sandbox):
    """Name, environment and stdio are prepared in the template (not per run): each run must
    still show its own name, see only the scrubbed variables with HOME/TMPDIR at its own folder,
    and write through working stdio to its own files."""
    program = (
        "import os, sys\n"
        "def f(x):\n"
        "    name = open('/proc/self/stat').read().split('(')[1].split(')')[0]\n"
        "    print('out-marker'); print('err-marker', file=sys.stderr)\n"
        "    return [name, os.getcwd(), os.environ['HOME'], os.environ['TMPDIR'],\n"
        "            sorted(os.environ)]\n"
    )
    seen = []
    for _ in range(2):
        result = sandbox.check_function(
            program, "f", [TestCase("assert", code="assert candidate(0) == 0")]
        )
        got = result.tests[0].feedback
        assert "'bdc-sandbox-run'" in got, got
        start = got.index("got: ") + 5
        name, cwd, home, tmp, keys = eval(got[start:].splitlines()[0])  # a plain repr
        assert home == tmp == cwd and cwd.startswith(str(sandbox.root)), (cwd, home, tmp)
        assert keys == ["HOME", "LANG", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "PATH", "TMPDIR"]
        assert result.stdout.strip() == "out-marker" and result.stderr.strip() == "err-marker"
        seen.append(cwd)
    assert seen[0] != seen[1]  # each run its own folder
