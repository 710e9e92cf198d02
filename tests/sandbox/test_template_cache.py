"""The template's caches: tests compiled once per template, module snapshots taken once.

Both live in the template (the parent of every run) and are inherited through fork; these
tests check what they hold and that a stale or broken entry never changes a verdict."""

import json
import os
import signal
import sys
import types

from bdc_ray.data import TestCase
from bdc_ray.sandbox import Sandbox, child


def test_prepare_sources_compiles_the_trusted_sources_and_keeps_each_tests_error():
    entry = child.prepare_sources(
        {
            "prompt": "def helper():\n    return 1\n",
            "preamble": "import math",
            "tests": [
                {"code": "assert candidate(1) == 1", "setup": ["x = 1", "y = 2"]},
                {"code": "assert candidate(1) ==", "setup": []},
            ],
            "test_modules": ["math"],
        }
    )
    assert entry["prompt"].co_filename == "<prompt>" and entry["preamble"].co_filename == "<test>"
    (setup, code), (_, broken) = entry["tests"]
    assert isinstance(setup, types.CodeType) and isinstance(code, types.CodeType)
    assert isinstance(broken, str) and "does not compile" in broken and "SyntaxError" in broken
    assert entry["tests"][1][0] is None  # no setup: nothing to run
    assert entry["test_modules"] == ("math",)
    empty = child.prepare_sources({"prompt": "  \n", "preamble": "", "tests": []})
    assert empty["prompt"] is None and empty["preamble"] is None


def _sent(monkeypatch):
    """The messages the supervisor sends to the template."""
    from bdc_ray.sandbox import supervisor

    sent, real = [], supervisor.send_msg
    monkeypatch.setattr(
        supervisor,
        "send_msg",
        lambda sock, obj, fds=None: (sent.append(dict(obj)), real(sock, obj, fds)),
    )
    return sent


def _tests(*codes):
    return [TestCase("assert", code=c) for c in codes]


def test_a_problems_tests_travel_once_per_template_and_never_the_program(monkeypatch):
    from bdc_ray.sandbox import supervisor

    monkeypatch.setattr(supervisor, "_SOURCES_MAX", 2)  # the template keeps two problems
    problems = [_tests(f"assert f({k}) == {k}", f"assert f(-{k}) == -{k}") for k in (1, 2, 3)]
    program = "def f(x):\n    return x  # marker-1234\n"
    with Sandbox(concurrency=1) as sb:
        sent = _sent(monkeypatch)

        def run(k, prog=program):
            result = sb.check_function(prog, "f", problems[k], prompt="def g():\n    return 0\n")
            return result, sent[-1]

        (first, m1), (second, m2) = run(0), run(0)
        assert first.passed and second.passed, first.feedback()
        assert "define" in m1 and m2["sources"] == m1["sources"] and "define" not in m2
        assert "marker-1234" not in json.dumps(m1["define"])  # only trusted sources are kept
        wrong, m3 = run(0, "def f(x):\n    return 0\n")  # the cached tests judge a new program
        assert [t.status for t in wrong.tests] == ["failed", "failed"] and "define" not in m3
        (_, m4), (_, m5) = run(1), run(2)  # a third problem: the least recently used goes
        assert "define" in m4 and m5["forget"] == [m1["sources"]]
        again, m6 = run(0)  # forgotten: defined again, and still right
        assert again.passed and "define" in m6 and m6["forget"] == [m4["sources"]]
        # a new template holds nothing: the supervisor defines again after a restart
        os.killpg(sb._proc.pid, signal.SIGKILL)
        sb._proc.wait(10)
        after, m7 = run(2)
        assert after.passed and "define" in m7, after.feedback()


def test_a_test_that_does_not_compile_is_that_tests_error_and_the_next_run_is_unaffected(
    sandbox,
):
    program = "def f(x):\n    return x\n"
    bad = sandbox.check_function(program, "f", _tests("assert f(1) ==", "assert f(1) == 1"))
    assert [t.status for t in bad.tests] == ["error", "passed"]
    assert "does not compile: SyntaxError" in bad.tests[0].feedback
    good = _tests("assert f(1) == 1", "assert f(2) == 2")
    for _ in range(2):  # the second run takes the compiled tests from the template
        ok = sandbox.check_function(program, "f", good)
        assert ok.passed, ok.feedback()
    wrong = sandbox.check_function("def f(x):\n    return -x\n", "f", good)
    assert [t.status for t in wrong.tests] == ["failed", "failed"]
    # a preamble that does not compile: every test is an error, none passes
    pre = sandbox.check_function(program, "f", good, preamble="import (")
    assert [t.status for t in pre.tests] == ["error", "error"], pre.feedback()


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
    still show its own name, see only the scrubbed variables with `~` and temporary files in
    its own folder, and write through working stdio to its own files."""
    program = (
        "import os, sys, tempfile\n"
        "def f(x):\n"
        "    name = open('/proc/self/stat').read().split('(')[1].split(')')[0]\n"
        "    print('out-marker'); print('err-marker', file=sys.stderr)\n"
        "    fd, path = tempfile.mkstemp(); os.close(fd)\n"
        "    import signal\n"
        "    sigs = [signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGPIPE]\n"
        "    return [name, os.getcwd(), os.path.realpath(os.path.expanduser('~')),\n"
        "            os.path.dirname(os.path.realpath(path)), sorted(os.environ),\n"
        "            [signal.getsignal(s) == signal.SIG_DFL for s in sigs]]\n"
    )
    seen = []
    for _ in range(2):
        result = sandbox.check_function(
            program, "f", [TestCase("assert", code="assert candidate(0) == 0")]
        )
        got = result.tests[0].feedback
        assert "'bdc-sandbox-run'" in got, got
        start = got.index("got: ") + 5
        name, cwd, home, tmp, keys, default = eval(got[start:].splitlines()[0])  # a plain repr
        assert default == [True] * 4, default  # none of the template's handlers
        assert home == tmp == cwd and cwd.startswith(str(sandbox.root)), (cwd, home, tmp)
        assert keys == ["HOME", "LANG", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "PATH", "TMPDIR"]
        assert result.stdout.strip() == "out-marker" and result.stderr.strip() == "err-marker"
        seen.append(cwd)
    assert seen[0] != seen[1]  # each run its own folder


def test_runs_forked_without_os_fork_still_get_their_own_random_stream(sandbox):
    """The template forks with fork(2) itself, skipping os.fork's at-fork callbacks; each run
    must still reseed `random` (else every run would draw the template's same numbers)."""
    program = "import random\ndef f(x):\n    return [random.random() for _ in range(3)]\n"
    draws = []
    for _ in range(3):
        result = sandbox.check_function(
            program, "f", [TestCase("assert", code="assert candidate(0) == 0")]
        )
        got = result.tests[0].feedback
        draws.append(got[got.index("got: ") + 5 :].splitlines()[0])
    assert len(set(draws)) == 3, draws


def test_warm_up_runs_every_path_of_the_harness_and_leaves_the_template_as_it_was():
    """warm_up runs in the template itself: it must exercise the sealed harness (passing,
    failing and raising tests) and leave no audit hook, timer, handler or disabled collector."""
    import subprocess

    script = (
        "import gc, json, os, signal, sys, tempfile\n"
        "from bdc_ray.sandbox import child\n"
        "sigs = (signal.SIGALRM, signal.SIGVTALRM, signal.SIGPROF)\n"
        "before = [signal.getsignal(s) for s in sigs]\n"
        "run_function, _ = child.seal()\n"
        "statuses = child.warm_up(run_function, rounds=3)\n"
        "outside = os.path.join(tempfile.gettempdir(), 'bdc-warm-up-probe')\n"
        "open(outside, 'w').close(); os.remove(outside)  # refused were a hook installed\n"
        "print(json.dumps({'statuses': statuses, 'gc': gc.isenabled(),\n"
        "    'handlers': [signal.getsignal(s) == b for s, b in zip(sigs, before)],\n"
        "    'timer': signal.getitimer(signal.ITIMER_REAL)[0]}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["statuses"] == ["passed"] * 4 + ["failed", "error"], got
    assert got["gc"] and all(got["handlers"]) and got["timer"] == 0.0, got
