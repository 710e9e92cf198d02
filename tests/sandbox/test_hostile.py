"""Hostile programs: none passes, none harms the host, each gets a truthful status, and the
sandbox keeps serving the next program."""

import os
import textwrap

import pytest

from bdc_ray.data import TestCase
from bdc_ray.data.problems import function_problem, stdio_problem
from tests.helpers.sandbox import ADD, GOOD

SECRET = "hunter2-do-not-leak"


def prog(body: str) -> str:
    return textwrap.dedent(body).strip() + "\n"


# (name, program, statuses it may truthfully get)
HOSTILE = [
    (
        "prints passed",
        prog("""
        print("passed"); print("OK 2/2 tests passed")
        def add(a, b): return 0
        """),
        {"failed"},
    ),
    (
        "os._exit(0) at load",
        prog("""
        import os; os._exit(0)
        """),
        {"killed"},
    ),
    (
        "os._exit(0) in the call",
        prog("""
        import os
        def add(a, b): os._exit(0)
        """),
        {"killed"},
    ),
    (
        "sys.exit(0) at load",
        prog("""
        import sys; sys.exit(0)
        """),
        {"error"},
    ),
    (
        "sys.exit(0) in the call",
        prog("""
        import sys
        def add(a, b): sys.exit(0)
        """),
        {"error"},
    ),
    (
        "replaces AssertionError",
        prog("""
        import builtins
        class Quiet(Exception): pass
        builtins.AssertionError = Quiet
        def add(a, b): return 0
        """),
        {"failed"},
    ),
    (
        "always-equal object",
        prog("""
        class Eq:
            def __eq__(self, other): return True
        def add(a, b): return Eq()
        """),
        {"error"},
    ),
    (
        "int subclass equal to all",
        prog("""
        class I(int):
            def __eq__(self, other): return True
            __hash__ = int.__hash__
        def add(a, b): return I(0)
        """),
        {"error"},
    ),
    (
        "list subclass equal to all",
        prog("""
        class L(list):
            def __eq__(self, other): return True
        def add(a, b): return L()
        """),
        {"error"},
    ),
    (
        "infinite loop",
        prog("""
        def add(a, b):
            while True: pass
        """),
        {"timeout"},
    ),
    (
        "ignores the alarm",
        prog("""
        import signal
        signal.signal(signal.SIGALRM, signal.SIG_IGN)
        signal.setitimer(signal.ITIMER_REAL, 0)
        def add(a, b):
            while True:
                signal.setitimer(signal.ITIMER_REAL, 0)
        """),
        {"timeout"},
    ),
    (
        "catches everything in a loop",
        prog("""
        def add(a, b):
            while True:
                try:
                    while True: pass
                except BaseException:
                    pass
        """),
        {"timeout"},
    ),
    (
        "memory bomb",
        prog("""
        def add(a, b):
            x = bytearray(8 * 1024 ** 3)
            return a + b
        """),
        {"memory"},
    ),
    (
        "growing memory",
        prog("""
        def add(a, b):
            xs = []
            while True: xs.append("x" * 10 ** 7)
        """),
        {"memory", "timeout"},
    ),
    (
        "fork bomb",
        prog("""
        import os
        def add(a, b):
            while True: os.fork()
        """),
        {"error"},
    ),
    (
        "subprocess",
        prog("""
        import subprocess
        def add(a, b):
            subprocess.run(["sh", "-c", "touch /tmp/bdc-pwned"])
            return a + b
        """),
        {"error"},
    ),
    (
        "os.system",
        prog("""
        import os
        def add(a, b):
            os.system("touch /tmp/bdc-pwned")
            return a + b
        """),
        {"error"},
    ),
    (
        "writes outside its directory",
        prog("""
        def add(a, b):
            open(SENTINEL_DIR + "/pwned.txt", "w").write("x")
            return a + b
        """),
        {"error"},
    ),
    (
        "deletes a host file",
        prog("""
        import os
        def add(a, b):
            os.remove(SENTINEL_DIR + "/sentinel.txt")
            return a + b
        """),
        {"error"},
    ),
    (
        "renames a host file",
        prog("""
        import os
        def add(a, b):
            os.rename(SENTINEL_DIR + "/sentinel.txt", "stolen.txt")
            return a + b
        """),
        {"error"},
    ),
    (
        "reads environment secrets",
        prog("""
        import os
        def add(a, b): return repr(dict(os.environ))
        """),
        {"failed"},
    ),
    (
        "reads /proc environ",
        prog("""
        def add(a, b): return open("/proc/1/environ").read()
        """),
        {"error"},
    ),
    (
        "reads /etc/shadow",
        prog("""
        def add(a, b): return open("/etc/shadow").read()
        """),
        {"error"},
    ),
    (
        "opens a socket",
        prog("""
        import socket
        def add(a, b):
            socket.create_connection(("127.0.0.1", 22), timeout=1)
            return a + b
        """),
        {"error"},
    ),
    (
        "kills its parent",
        prog("""
        import os, signal
        os.kill(os.getppid(), signal.SIGKILL)
        def add(a, b): return a + b
        """),
        {"error"},
    ),
    (
        "kills everything it can",
        prog("""
        import os, signal
        def add(a, b):
            os.kill(-1, signal.SIGKILL)
            return a + b
        """),
        {"error"},
    ),
    (
        "ctypes segfault",
        prog("""
        import ctypes
        def add(a, b): return ctypes.string_at(0)
        """),
        {"error"},
    ),
    (
        "real segfault",
        prog("""
        import faulthandler
        def add(a, b): faulthandler._sigsegv()
        """),
        {"killed"},
    ),
    (
        "deep recursion",
        prog("""
        def add(a, b): return add(a + 1, b)
        """),
        {"error"},
    ),
    (
        "recursion past the C stack",
        prog("""
        import sys
        sys.setrecursionlimit(10 ** 8)
        def add(a, b): return add(a + 1, b)
        """),
        {"killed", "memory", "error", "timeout"},
    ),
    (
        "thread spam",
        prog("""
        import threading, time
        def add(a, b):
            ts = []
            for _ in range(10000):
                t = threading.Thread(target=time.sleep, args=(60,)); t.start(); ts.append(t)
            return a + b
        """),
        {"error", "memory"},
    ),
    (
        "reads stdin",
        prog("""
        def add(a, b): return int(input())
        """),
        {"error"},
    ),
    (
        "huge output",
        prog("""
        def add(a, b):
            while True: print("x" * 10 ** 6)
        """),
        {"error", "timeout"},
    ),
    (
        "forges verdict lines",
        prog("""
        import os
        def add(a, b):
            for fd in range(3, 64):
                for i in range(4):
                    try: os.write(fd, ("%032x passed {}\\n" % i).encode())
                    except OSError: pass
            return 0
        """),
        {"failed", "error"},
    ),
    (
        "walks frames for the nonce",
        prog("""
        import sys
        def add(a, b):
            f = sys._getframe(1)
            return f.f_back.f_locals
        """),
        {"error"},
    ),
    (
        "takes the refusal of a frame for a missing one and looks elsewhere",
        prog("""
        import sys
        def add(a, b):
            try:
                f = sys._getframe(1)
            except ValueError:  # what namedtuple and TypeVar do: carry on without a frame
                try:
                    return sys._current_frames()
                except ValueError:
                    return 0
            return f.f_back.f_locals
        """),
        {"failed", "error"},
    ),
    (
        "walks a traceback for the nonce",
        prog("""
        def add(a, b):
            try:
                raise ValueError
            except ValueError as e:
                return e.__traceback__.tb_frame.f_back.f_locals
        """),
        {"error"},
    ),
    (
        "searches the heap",
        prog("""
        import gc
        def add(a, b):
            return [o for o in gc.get_objects() if isinstance(o, dict) and "nonces" in o]
        """),
        {"error", "failed"},
    ),
    (
        "traces the harness",
        prog("""
        import sys
        sys.settrace(lambda *a: None)
        def add(a, b): return a - b
        """),
        {"failed", "error"},
    ),
    (
        "malicious exception text",
        prog("""
        import sys
        class E(Exception):
            def __str__(self): return repr(sys._getframe(3).f_locals)
            @property
            def args(self): return (sys._getframe(3).f_locals,)
        def add(a, b): raise E()
        """),
        {"error"},
    ),
    (
        "patches math for the test",
        prog("""
        import math
        math.isclose = lambda *a, **k: True
        def add(a, b): return 0
        """),
        {"failed"},
    ),
    (
        "imports multiprocessing",
        prog("""
        import multiprocessing
        def add(a, b):
            multiprocessing.Process(target=print).start()
            return a + b
        """),
        {"error"},
    ),
    (
        "changes directory and writes",
        prog("""
        import os
        def add(a, b):
            os.chdir("/")
            open("pwned.txt", "w").write("x")
            return a + b
        """),
        {"error"},
    ),
    (
        "keyboard interrupt",
        prog("""
        def add(a, b): raise KeyboardInterrupt
        """),
        {"error"},
    ),
    (
        "becomes root again",
        prog("""
        import os
        def add(a, b):
            os.setuid(0)
            return a + b
        """),
        {"error"},
    ),
]

# forging by patching: the harness's own code, the standard library it calls, and what a test
# reads after the candidate ran (the test below reads `math.isclose` and `abs` only after the
# call, so a patch made during the call would be seen without the harness's defences)
# once the guard is blinded: walk up to the harness's frame and write a pass for every nonce
FORGE_FROM_FRAMES = """
import sys
def forge_from_frames():
    f = sys._getframe(2)
    while f is not None:
        loc = f.f_locals
        if "nonces" in loc and "vfd" in loc:
            import os
            for n in loc["nonces"]:
                os.write(loc["vfd"], (n + " passed {}\\n").encode())
        f = f.f_back
    return 0
"""
LIAR = """
class Liar:
    def __eq__(self, other): return True
    def __ne__(self, other): return False
    def __lt__(self, other): return True
"""
HOSTILE += [
    (
        "patches builtins.type in the call",
        prog(LIAR)
        + prog("""
        def add(a, b):
            import builtins
            builtins.type = lambda *a: int if len(a) == 1 else object
            return Liar()
        """),
        {"failed", "error"},
    ),
    (
        "patches the harness through sys.modules",
        prog(LIAR)
        + prog("""
        import sys
        def add(a, b):
            for name, m in list(sys.modules.items()):
                if name.startswith("bdc_ray"):
                    for attr in ("_plain", "_safe_repr"):
                        if hasattr(m, attr):
                            setattr(m, attr, lambda *a, **k: True)
            return Liar()
        """),
        {"failed", "error"},
    ),
    (
        "imports the harness and empties its blocklists",
        prog(FORGE_FROM_FRAMES)
        + prog("""
        import sys
        def add(a, b):
            for name, m in list(sys.modules.items()):
                if name.startswith("bdc_ray"):
                    for attr in ("_BLOCKED", "_PATH_EVENTS", "_BLOCKED_MODULES"):
                        v = getattr(m, attr, None)
                        if v is not None:
                            try: v.clear()
                            except AttributeError: pass
                            setattr(m, attr, frozenset())
                    if hasattr(m, "_BLOCKED_PREFIXES"): m._BLOCKED_PREFIXES = ("\\0",)
            return forge_from_frames()
        """),
        {"failed", "error"},
    ),
    (
        "rewrites verdicts through os.write",
        prog("""
        import os
        _write = os.write
        os.write = lambda fd, data: _write(fd, data.replace(b" failed ", b" passed "))
        def add(a, b): return 0
        """),
        {"failed"},
    ),
    (
        "rewrites verdicts through json",
        prog("""
        import json, os
        _dumps = json.dumps
        def dumps(*a, **k):
            os.write(2, b"saw a verdict\\n")
            return "{}"
        json.dumps = dumps
        def add(a, b): return 0
        """),
        {"failed"},
    ),
    (
        "patches math during the call",
        prog("""
        import math
        def add(a, b):
            math.isclose = lambda *a, **k: True
            return 0
        """),
        {"failed"},
    ),
    (
        "patches abs during the call",
        prog("""
        import builtins
        def add(a, b):
            builtins.abs = lambda x: 0
            return 0
        """),
        {"failed"},
    ),
    (
        "swaps math in sys.modules during the call",
        prog("""
        import sys, types
        def add(a, b):
            fake = types.ModuleType("math"); fake.isclose = lambda *a, **k: True
            sys.modules["math"] = fake
            return 0
        """),
        {"failed"},
    ),
    (
        "poisons the harness's snapshot of math",
        prog("""
        import sys, math
        def add(a, b):
            for name, m in list(sys.modules.items()):
                for entry in (getattr(m, "_SNAPSHOTS", None) or {}).values():
                    try:
                        if entry[0] is math:
                            entry[3]["isclose"] = lambda *a, **k: True
                            entry[2][entry[1].index("isclose")] = None
                    except Exception:
                        pass
            math.isclose = lambda *a, **k: True
            return 0
        """),
        {"failed"},
    ),
    (
        "patches math from a signal handler",
        prog("""
        import math, signal
        def patch(*a): math.isclose = lambda *a, **k: True
        def add(a, b):
            signal.signal(signal.SIGPROF, patch)
            signal.setitimer(signal.ITIMER_PROF, 0.0005, 0.0005)
            return 0
        """),
        {"failed", "error"},
    ),
    (
        "patches math from a thread",
        prog("""
        import math, threading
        def loop():
            while True: math.isclose = lambda *a, **k: True
        def add(a, b):
            threading.Thread(target=loop, daemon=True).start()
            return 0
        """),
        {"failed", "error"},
    ),
    (
        "reaches the harness through the alarm handler",
        prog(FORGE_FROM_FRAMES)
        + prog("""
        import signal, sys
        def add(a, b):
            h = signal.getsignal(signal.SIGALRM)
            g = getattr(h, "__globals__", {})
            for k in ("_BLOCKED", "_BLOCKED_MODULES"):
                if k in g: g[k] = frozenset()
            if "_BLOCKED_PREFIXES" in g: g["_BLOCKED_PREFIXES"] = ("\\0",)
            return forge_from_frames()
        """),
        {"failed", "error"},
    ),
]

MATH_TESTS = [TestCase("assert", code="import math\nassert math.isclose(candidate(1, 2), 3)")]
# read after the call: the value first, then the patched-or-not helpers
AFTER_CALL_TESTS = [
    TestCase(
        "assert", code="assert math.isclose(x, 3)", setup=("x = candidate(1, 2)", "import math")
    ),
    TestCase("assert", code="assert abs(x - 4) < 1e-9", setup=("x = candidate(2, 2)",)),
]


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    d = tmp_path_factory.mktemp("host")
    (d / "sentinel.txt").write_text("keep me")
    os.environ["BDC_TEST_SECRET"] = SECRET  # in the supervisor's environment only
    yield d
    os.environ.pop("BDC_TEST_SECRET", None)


def _is_spare(pid: str) -> bool:
    """A slot's next run, forked ahead and waiting for its program (see slot.py): never a
    process a program started (runs cannot fork, and the slot kills everything of a run)."""
    try:
        with open(f"/proc/{pid}/comm") as fh:
            return fh.read().strip() == "bdc-spare"
    except OSError:
        return False


def _sandbox_processes() -> list[int]:
    """Processes running as a sandbox slot uid (62000+): none may outlive its run."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/status") as fh:
                uid = next(int(line.split()[1]) for line in fh if line.startswith("Uid:"))
        except (OSError, StopIteration):
            continue
        if 62000 <= uid < 62100 and not _is_spare(pid):
            found.append(int(pid))
    return found


@pytest.mark.parametrize("name, program, statuses", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_program(sandbox, host, name, program, statuses):
    program = program.replace("SENTINEL_DIR", repr(str(host)))
    tests = (
        AFTER_CALL_TESTS
        if "during the call" in name or " math " in f" {name} "
        else MATH_TESTS
        if "math" in name
        else ADD.tests
    )
    r = sandbox.check_function(program, "add", tests, prompt=ADD.prompt)
    assert not r.passed and r.pass_rate == 0.0
    assert r.status in statuses, (r.status, r.feedback(), r.stderr[-500:])
    everything = r.feedback(9) + r.stdout + r.stderr
    assert SECRET not in everything
    assert "root:" not in everything  # no /etc/shadow content
    assert (host / "sentinel.txt").read_text() == "keep me"
    assert not (host / "pwned.txt").exists() and not os.path.exists("/tmp/bdc-pwned")
    assert not os.path.exists("/pwned.txt")
    assert _sandbox_processes() == []
    # the sandbox keeps serving
    assert sandbox.check(GOOD, ADD).passed


def test_there_are_at_least_30_hostile_programs():
    assert len(HOSTILE) >= 30


def test_feedback_names_input_expected_and_got(sandbox):
    r = sandbox.check(ADD.prompt + "    return a - b\n", ADD)
    assert r.status == "failed" and r.pass_rate == 0.0
    fb = r.tests[0].feedback
    assert "assert candidate(1, 2) == 3" in fb and "got: -1" in fb and "AssertionError" in fb


def test_public_and_hidden_tests_are_run_separately(sandbox):
    half = ADD.prompt + "    return 3\n"  # right on the public test only
    assert sandbox.check(half, ADD, tests="public").passed
    assert not sandbox.check(half, ADD, tests="hidden").passed
    assert sandbox.check(half, ADD).pass_rate == 0.5


def test_prompt_helpers_cannot_be_redefined_by_the_program(sandbox):
    p = function_problem(
        "helper",
        "def poly(x):\n    return x * x\n\ndef root(y):\n    '''x with poly(x) == y'''\n",
        "root",
        "def check(candidate):\n    assert abs(poly(candidate(4.0)) - 4.0) < 1e-6\n",
    )
    cheat = "def poly(x):\n    return 4.0\n\ndef root(y):\n    return 123.0\n"
    assert not sandbox.check(cheat, p).passed
    assert sandbox.check("def root(y):\n    return y ** 0.5\n", p).passed


STDIO = stdio_problem("io/sum", "sum two ints", [("1 2\n", "3\n"), ("5 5\n", "10\n"), ("0 0", "0")])


def test_stdio_exact_and_whitespace_normalised(sandbox):
    ok = "a, b = map(int, input().split())\nprint(a + b)\n"
    spaced = "a, b = map(int, input().split())\nprint('  ', a + b, '  ')\n"
    r = sandbox.check(ok, STDIO)
    assert r.passed and r.status == "passed"
    assert sandbox.check(spaced, STDIO).passed
    wrong = sandbox.check("print(42)\n", STDIO)
    assert wrong.status == "failed" and "expected: '3\\n'" in wrong.tests[0].feedback


@pytest.mark.parametrize(
    "program, status",
    [
        ("while True: pass\n", "timeout"),
        ("raise ValueError('boom')\n", "error"),
        ("import os\nos.system('echo hi')\n", "error"),
        ("x = bytearray(8 * 1024 ** 3)\n", "memory"),
        ("import faulthandler\nfaulthandler._sigsegv()\n", "killed"),
        ("print(open('/etc/shadow').read())\n", "error"),
    ],
)
def test_stdio_hostile(sandbox, program, status):
    r = sandbox.check(program, STDIO, tests=STDIO.tests[:1])
    assert r.status == status and not r.passed, (r.status, r.feedback(), r.stderr)
    assert "root:" not in r.stdout
    assert _sandbox_processes() == []


def test_a_test_that_calls_the_function_by_name_is_guarded_too(sandbox):
    """MBPP-style asserts call the function by its name, not `candidate`: that call must go
    through the same guard (an object whose __eq__ always answers True once passed here)."""
    liar = "class Yes:\n    def __eq__(self, other):\n        return True\n"
    tests = [TestCase("assert", code="assert add(1, 2) == 3")]
    r = sandbox.check_function(liar + "def add(a, b):\n    return Yes()\n", "add", tests)
    assert r.status == "error" and "only plain values" in r.tests[0].feedback, r.feedback()
    recursive = "def add(a, b):\n    return a if b == 0 else add(a, b - 1) + 1\n"
    assert sandbox.check_function(recursive, "add", tests).passed


def test_a_program_that_replaces_its_output_descriptors_does_not_hang_the_sandbox(sandbox):
    """Output goes to memfds the supervisor made and reads itself: a program that closes them,
    or puts pipes nobody reads in their place, changes nothing the supervisor waits on."""
    import threading

    swap = "import os\nr, w = os.pipe()\nos.dup2(w, 1); os.dup2(w, 2)\nos.write(1, b'x' * 60000)\n"
    runs = [
        lambda: sandbox.check_function(swap + "def add(a, b):\n    return 0\n", "add", ADD.tests),
        lambda: sandbox.check(swap + "print(4)\n", STDIO, tests=STDIO.tests[:1]),
    ]
    for run in runs:
        out = []
        t = threading.Thread(target=lambda run=run, out=out: out.append(run()), daemon=True)
        t.start()
        t.join(30)
        assert not t.is_alive(), "the sandbox blocked on a program's descriptors"
        assert out[0].status == "failed" and out[0].stdout == "", out[0].feedback()
    assert sandbox.check(GOOD, ADD).passed


def test_files_written_one_after_another_stop_at_the_run_folder_cap(sandbox):
    """Each file stays under RLIMIT_FSIZE, so only the folder's cap stops a program that
    writes file after file (the folders lie on a RAM file system: this once could fill the
    host's memory at ~2 GB/s)."""
    filler = (
        "def add(a, b):\n"
        "    chunk, written = b'x' * (1 << 20), 0\n"
        "    try:\n"
        "        for i in range(10_000):\n"
        "            with open(f'fill{i}', 'wb') as fh:\n"
        "                for _ in range(15):\n"
        "                    fh.write(chunk)\n"
        "                    written += 1\n"
        "    except OSError as e:\n"
        "        return [written, e.errno]\n"
        "    return [written, 0]\n"
    )
    r = sandbox.check_function(filler, "add", ADD.tests[:1])
    assert not r.passed and "got: [" in r.tests[0].feedback, r.feedback()
    written, errno = eval(r.tests[0].feedback.split("got: ")[1].splitlines()[0])
    cap = sandbox.limits.run_dir_mb
    assert errno == 28 and cap // 2 <= written <= cap, (written, errno)  # ENOSPC at the cap
    assert sandbox.check(GOOD, ADD).passed


def test_an_input_larger_than_the_run_folder_arrives_whole_and_nothing_is_left():
    """stdin is a memfd of the supervisor's, not a file in the run's capped /tmp."""
    from bdc_ray.sandbox import Limits, Sandbox

    with Sandbox(concurrency=1, limits=Limits(run_dir_mb=1)) as sb:
        big = [TestCase("io", input="1 2\n" + " " * (2 << 20), output="3\n")]
        program = "import sys\na, b = map(int, sys.stdin.read().split())\nprint(a + b)\n"
        r = sb.check_stdio(program, big + STDIO.tests[:1])
        assert [t.status for t in r.tests] == ["passed", "passed"], r.feedback()
        template, host_mounts = sb._proc.pid, open("/proc/mounts").read()
        # the minimal root is mounted in the template's own mount namespace, never the host's
        assert open(f"/proc/{template}/mounts").read() != host_mounts
    assert open("/proc/mounts").read() == host_mounts and not os.path.exists(f"/proc/{template}")


def test_isolation_is_reported_layer_by_layer(sandbox):
    from bdc_ray.sandbox.protocol import LAYERS

    iso = sandbox.isolation
    assert list(iso["layers"]) == list(LAYERS)
    for name in LAYERS:
        layer = iso["layers"][name]
        assert layer["active"] is True and layer["required"] is True and layer["detail"], layer
        assert iso[name] is True
    assert iso["missing"] == [] and sandbox.isolation_missing == ()
    assert iso["uid_per_slot"] is (os.geteuid() == 0)


def test_the_sandbox_recovers_when_its_template_is_killed(sandbox):
    import signal

    os.killpg(sandbox._proc.pid, signal.SIGKILL)
    sandbox._proc.wait(10)
    assert sandbox.check(GOOD, ADD).passed  # restarted on demand
