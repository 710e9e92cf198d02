"""The trusted side: runs untrusted programs against tests through the warm template.

    sb = Sandbox(concurrency=4)
    result = sb.check(program, problem, tests="public")   # or "hidden", "all", [TestCase]
    result.passed, result.pass_rate, result.status, result.tests[i].feedback

Thread-safe: `concurrency` runs proceed at once, each in its own slot (its own uid when the
host lets us drop privileges, so runs cannot signal or read each other). The template is
restarted if it dies; a run that was in flight then reports `killed`.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import itertools
import json
import logging
import os
import queue
import secrets
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..data.problems import Problem, TestCase
from .protocol import recv_msg, send_msg

log = logging.getLogger(__name__)

Status = Literal["passed", "failed", "error", "timeout", "memory", "killed"]
_SEVERITY = ["killed", "timeout", "memory", "error", "failed"]
_BASE_UID = 62000  # slot uids: 62000, 62001, ... (no passwd entry needed)
_SOURCES_MAX = 4096  # problems whose compiled tests the template keeps


@dataclass(frozen=True)
class Limits:
    test_timeout_s: float = 3.0  # per test
    total_timeout_s: float = 10.0  # whole program (all its tests), wall clock
    memory_mb: int = 1024  # address space
    file_mb: int = 16  # largest file (stdout included)
    open_files: int = 64
    processes: int = 32  # per run uid (threads count)
    output_chars: int = 4096  # kept of stdout/stderr and feedback
    run_dir_mb: int = 64  # a run's folder in all (its files, stdout, stderr, stdin), as root


@dataclass
class TestResult:
    index: int
    status: Status
    feedback: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclass
class CheckResult:
    status: Status
    tests: list[TestResult]
    wall_s: float
    stdout: str = ""
    stderr: str = ""
    exit: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.tests) and all(t.passed for t in self.tests)

    @property
    def pass_rate(self) -> float:
        return sum(t.passed for t in self.tests) / len(self.tests) if self.tests else 0.0

    def feedback(self, max_tests: int = 3) -> str:
        """Verbal feedback of the failing tests, for reflection prompts."""
        bad = [t for t in self.tests if not t.passed][:max_tests]
        return "\n\n".join(f"test {t.index}: {t.status}\n{t.feedback}".strip() for t in bad)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["passed"], d["pass_rate"] = self.passed, self.pass_rate
        for t in d["tests"]:
            t["passed"] = t["status"] == "passed"
        return d


def _worst(statuses: list[str]) -> Status:
    for s in _SEVERITY:
        if s in statuses:
            return s  # type: ignore[return-value]
    return "passed"


@functools.lru_cache(maxsize=4096)
def _test_modules(codes: tuple[str, ...], prompt: str = "") -> list[str]:
    """Modules whose contents a run restores after each call into the program: those the
    tests import, and those the prompt's helpers keep a reference to (`import math`; a name
    taken with `from math import fabs` is bound before the program runs)."""
    names: set[str] = set()
    for code, whole in [(c, True) for c in codes] + [(prompt, False)]:
        try:
            tree = ast.parse(code)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif whole and isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module)
    return sorted(names)


@functools.lru_cache(maxsize=_SOURCES_MAX)
def _sources(
    preamble: str, prompt: str, tests: tuple[tuple[str, tuple[str, ...]], ...]
) -> tuple[str, dict[str, Any]]:
    """A problem's trusted sources as the template compiles them, and their key (a digest:
    equal sources share one compiled entry, whatever Problem object they came from)."""
    payload = {
        "prompt": prompt,
        "preamble": preamble,
        "tests": [{"code": code, "setup": list(setup)} for code, setup in tests],
        "test_modules": _test_modules(
            (preamble, *(c for c, _ in tests), *(x for _, s in tests for x in s)), prompt
        ),
    }
    digest = hashlib.blake2b(json.dumps(payload).encode(), digest_size=16).hexdigest()
    return digest, payload


def _exit_info(status: int | None) -> dict[str, Any]:
    if status is None:
        return {"known": False}
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return {
            "signal": sig,
            "name": signal.Signals(sig).name
            if sig in signal.Signals._value2member_map_
            else str(sig),
        }
    return {"code": os.waitstatus_to_exitcode(status)}


def _normalise(text: str) -> list[str]:
    return text.split()


class Sandbox:
    def __init__(
        self,
        concurrency: int | None = None,
        limits: Limits | None = None,
        namespaces: bool = True,
        drop_privileges: bool = True,
        root_dir: str | None = None,
    ) -> None:
        self.limits = limits or Limits()
        self._limits_of: Limits | None = None
        self._limits_dict: dict[str, Any] = {}
        self.concurrency = concurrency or max(1, os.cpu_count() or 1)
        self.namespaces = namespaces
        self.drop = drop_privileges and os.geteuid() == 0
        # resolved once: runs' folders lie under it, and a run's guard compares real paths
        self.root = Path(
            os.path.realpath(
                tempfile.mkdtemp(prefix="bdc-sandbox-", dir=root_dir or self._default_root())
            )
        )
        self._run_numbers = itertools.count()
        # a Sandbox never closed (its owner collected, or exiting) still removes its folder
        self._remove_root = weakref.finalize(self, shutil.rmtree, str(self.root), True)
        os.chmod(self.root, 0o711)  # run uids may enter their own folder, not list others
        # one folder per slot: the template mounts a capped tmpfs on each, in its own mount
        # namespace (see zygote.cap_run_dirs); this side reaches them through /proc/PID/root
        self._slot_dirs = [f"{self.root}/slot{i}" for i in range(self.concurrency)]
        for path in self._slot_dirs:
            os.mkdir(path, 0o711)
        self._fs = ""  # "/proc/<template's waiter>/root" while the cap is in force
        self._slots: queue.Queue[int] = queue.Queue()
        for i in range(self.concurrency):
            self._slots.put(i)
        self._send_lock = threading.Lock()
        self._start_lock = threading.Lock()
        # keys of the sources the running template holds, least recently used first
        self._defined: OrderedDict[str, None] = OrderedDict()
        self._waiters: dict[str, list] = {}
        self._proc: subprocess.Popen | None = None
        self._gone = False  # set by the reader when the running template's socket closes
        self._sock: socket.socket | None = None
        self.isolation: dict[str, Any] = {}
        self._start()

    def _default_root(self) -> str | None:
        """A RAM file system for the runs' folders when it has four times the room every slot's
        stdout and stderr could take at their cap (a run creates and deletes a folder and three
        files: on a journaling disk that is a good share of its cost); else the usual temp dir."""
        need = 4 * self.concurrency * 2 * (self.limits.file_mb << 20)
        try:
            st = os.statvfs("/dev/shm")
        except OSError:
            return None
        if st.f_bavail * st.f_frsize >= need and os.access("/dev/shm", os.W_OK | os.X_OK):
            return "/dev/shm"
        return None

    # ------------------------------------------------------------------ template lifecycle
    def _start(self) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        root = str(Path(__file__).resolve().parents[2])
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "PYTHONPATH": root,
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONHASHSEED": "0",
            "OPENBLAS_NUM_THREADS": "1",
            "OMP_NUM_THREADS": "1",
            # every library symbol resolved at the template's start: else each run resolves
            # (and so writes, copying a page) the ones the template had not called yet
            "LD_BIND_NOW": "1",
        }
        self._proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bdc_ray.sandbox.zygote",
                str(child.fileno()),
                json.dumps(
                    {
                        "namespaces": self.namespaces,
                        "run_dirs": self._slot_dirs if self.namespaces else [],
                        "run_dir_mb": self.limits.run_dir_mb,
                        "drop_privileges": self.drop,
                    }
                ),
            ],
            pass_fds=[child.fileno()],
            env=env,
            cwd="/",
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        child.close()
        parent.settimeout(60)
        ready, _ = recv_msg(parent)
        parent.settimeout(None)
        iso = dict(ready["isolation"])
        with self._send_lock:  # a new template holds no sources yet
            self._sock, self._defined, self._gone = parent, OrderedDict(), False
            self._fs = f"/proc/{self._proc.pid}/root" if iso.get("run_dir_cap_mb") else ""
        iso.update(
            fresh_process_per_program="fork of a warm template",
            privilege_drop=self.drop,
            rlimits=["cpu", "address_space", "file_size", "open_files"]
            + (["processes"] if self.drop else []),
            audit_hook=True,
            scrubbed_environment=True,
            temp_dir_per_run=True,
        )
        self.isolation = iso
        missing = [
            k
            for k in ("net_namespace", "pid_namespace", "privilege_drop", "run_dir_cap_mb")
            if not iso.get(k)
        ]
        if missing:
            log.warning("sandbox isolation degraded on this host: no %s", ", ".join(missing))
        if iso.get("interpreter_exposed", []) is None:
            log.warning(
                "the interpreter lies under a folder that runs' uids cannot enter and it could "
                "not be exposed to them: runs can import only the modules the template preloads"
            )
        threading.Thread(
            target=self._reader, args=(parent,), daemon=True, name="sandbox-reader"
        ).start()

    def _reader(self, sock: socket.socket) -> None:
        while True:
            try:
                msg, _ = recv_msg(sock)
            except (EOFError, OSError, ValueError):
                break
            waiter = self._waiters.get(msg.get("id"))
            if waiter is not None and not waiter[2]:
                waiter[1], waiter[2] = msg.get("status"), True
                waiter[0].release()
        # the template died (or was stopped): the next run starts a new one
        with self._send_lock:
            if self._sock is sock:
                self._gone = True
        for waiter in list(self._waiters.values()):  # wake everyone still waiting
            if not waiter[2]:
                waiter[2] = True
                waiter[0].release()

    def _alive(self) -> bool:
        # the template's socket reaches EOF when it dies (no wait4 per run to learn that)
        return self._proc is not None and not self._gone and self._proc.returncode is None

    def _ensure(self) -> None:
        if self._alive():
            return
        with self._start_lock:
            if not self._alive():
                log.warning("sandbox template died; restarting it")
                self._stop_template()
                self._start()

    def _stop_template(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
        if self._proc is not None and self._proc.poll() is None:
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)
            except OSError:
                pass
            self._proc.wait(10)

    def close(self) -> None:
        self._stop_template()  # its mount namespace, and the runs' tmpfs mounts, go with it
        self._remove_root()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ one run
    def _launch(
        self,
        req: dict,
        slot: int,
        tmpdir: str,
        deadline_s: float,
        sources: tuple[str, dict[str, Any]] | None = None,
    ) -> tuple[bytes, dict]:
        """Start one run and collect its verdict stream until EOF or the deadline. `sources`
        (key, payload): the tests of a function run, sent only if the template lacks them.
        The caller took a slot (_slot), which started the template if need be."""
        rid = secrets.token_hex(8)
        req.update(op="run", id=rid, tmpdir=tmpdir)
        # [a lock held until the template reports the run's end, its status, reported]: a
        # bare lock, released by the reader thread, is the cheapest one-shot event
        waiter: list[Any] = [threading.Lock(), None, False]
        waiter[0].acquire()
        self._waiters[rid] = waiter
        r, w = os.pipe()
        os.set_blocking(r, False)  # only this end: the run's writes never fail with EAGAIN
        try:
            with self._send_lock:
                if sources is not None:
                    key, payload = sources
                    req["sources"] = key
                    if key in self._defined:
                        self._defined.move_to_end(key)
                    else:
                        self._defined[key] = None
                        req["define"] = payload
                        if len(self._defined) > _SOURCES_MAX:
                            req["forget"] = [self._defined.popitem(last=False)[0]]
                send_msg(self._sock, req, [w])
        except OSError:
            os.close(r)
            os.close(w)
            self._waiters.pop(rid, None)
            return b"", {"known": False, "error": "the sandbox template is gone"}
        os.close(w)
        data, timed_out, done = bytearray(), False, False
        end = time.monotonic() + deadline_s
        try:
            # most runs end within milliseconds: wait for the template's word that the process
            # ended rather than wake for every verdict line (one per test), and drain the pipe
            # every 50 ms meanwhile so that a run with many verdicts never blocks on it
            while True:
                done = waiter[0].acquire(timeout=min(0.05, max(0.0, end - time.monotonic())))
                if done or time.monotonic() >= end:
                    break
                try:
                    while chunk := os.read(r, 65536):
                        if len(data) < 1 << 20:
                            data += chunk
                except BlockingIOError:
                    pass
            while True:
                left = end - time.monotonic()
                if left <= 0:
                    timed_out = True
                    break
                ready, _, _ = select.select([r], [], [], left)
                if not ready:
                    continue
                try:
                    chunk = os.read(r, 65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    break
                if len(data) < 1 << 20:  # a program flooding the pipe gains nothing
                    data += chunk
        finally:
            os.close(r)
        if timed_out:
            with self._send_lock:
                try:
                    send_msg(self._sock, {"op": "kill", "id": rid})
                except OSError:
                    pass
        if not done:
            waiter[0].acquire(timeout=deadline_s + 10 if not timed_out else 15)
        self._waiters.pop(rid, None)
        info = _exit_info(waiter[1])
        info["timed_out"] = timed_out
        return bytes(data), info

    def _slot(self) -> tuple[int, str, str, int | None]:
        """A free slot and a new folder for its run: (slot, the folder as the run sees it, the
        same folder as this process reaches it, uid). Named by a counter: only this process
        creates entries there (mode 711: runs cannot list it either)."""
        slot = self._slots.get()
        try:
            self._ensure()  # the template's mount namespace holds the slot's tmpfs
            uid = _BASE_UID + slot if self.drop else None
            tmpdir = f"{self._slot_dirs[slot]}/run{next(self._run_numbers)}"
            here = self._fs + tmpdir
            os.mkdir(here, 0o700)
            if uid is not None:
                os.chown(here, uid, uid)
        except BaseException:
            self._slots.put(slot)
            raise
        return slot, tmpdir, here, uid

    def _finish(self, slot: int, here: str) -> tuple[str, str]:
        """The start of the run's stdout and stderr; then its folder is removed and the slot
        freed. Through one descriptor of the folder: every path from here crosses
        /proc/<pid>/root."""
        out = err = ""
        try:
            folder = os.open(here, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            folder = None
        try:
            if folder is not None:
                out, err = self._read(folder, "stdout"), self._read(folder, "stderr")
                # the usual case: a few files (stdout, stderr, stdin)
                for name in os.listdir(folder):
                    os.unlink(name, dir_fd=folder)
            os.rmdir(here)
        except OSError:  # folders, or anything else the program left
            shutil.rmtree(here, ignore_errors=True)
        finally:
            if folder is not None:
                os.close(folder)
            self._slots.put(slot)
        return out, err

    def _limits(self, uid: int | None, timeout: float) -> dict[str, Any]:
        if self._limits_of is not self.limits:  # Limits is frozen: one dict per instance
            self._limits_dict, self._limits_of = asdict(self.limits), self.limits
        return {**self._limits_dict, "cpu_s": int(timeout) + 1, "uid": uid}

    def _read(self, folder: int, name: str) -> str:
        """The start of a run's output file. Not through a link the program may have put in
        its place, and without blocking on a FIFO; an empty file is not opened."""
        try:
            st = os.stat(name, dir_fd=folder, follow_symlinks=False)
            if stat.S_ISREG(st.st_mode) and st.st_size == 0:
                return ""
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=folder)
        except OSError:
            return ""
        try:
            return os.read(fd, self.limits.output_chars).decode("utf-8", "replace")
        except OSError:
            return ""
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ public API
    def check(
        self,
        program: str,
        problem: Problem,
        tests: Literal["all", "public", "hidden"] | list[TestCase] = "all",
    ) -> CheckResult:
        if isinstance(tests, str):
            if tests == "all":
                chosen = problem.tests
            elif tests == "public":
                chosen = problem.public_tests
            elif tests == "hidden":
                chosen = problem.hidden_tests
            else:
                raise ValueError(
                    f"tests must be 'all', 'public', 'hidden' or a list, got {tests!r}"
                )
        else:
            chosen = list(tests)
        if problem.kind == "function":
            return self.check_function(
                program,
                problem.entry_point or "",
                chosen,
                preamble=problem.test_preamble,
                prompt=problem.prompt,
            )
        return self.check_stdio(program, chosen)

    def check_function(
        self,
        program: str,
        entry_point: str,
        tests: list[TestCase],
        preamble: str = "",
        prompt: str = "",
    ) -> CheckResult:
        if not tests:
            raise ValueError("no tests to run")
        start = time.perf_counter()
        deadline = min(self.limits.total_timeout_s, self.limits.test_timeout_s * len(tests) + 1.0)
        raw = secrets.token_hex(16 * len(tests))  # a 128-bit nonce per test, in one read
        nonces = [raw[i : i + 32] for i in range(0, len(raw), 32)]
        slot, tmpdir, here, uid = self._slot()
        try:
            req = {
                "kind": "function",
                "program": program,
                "entry_point": entry_point,
                "nonces": nonces,
                "limits": self._limits(uid, deadline),
            }
            src = _sources(preamble, prompt, tuple((t.code, tuple(t.setup)) for t in tests))
            data, info = self._launch(req, slot, tmpdir, deadline + 1.0, src)
        finally:
            stdout, stderr = self._finish(slot, here)
        index = {n: i for i, n in enumerate(nonces)}
        verdicts: dict[int, TestResult] = {}
        for line in data.decode("utf-8", "replace").splitlines():
            nonce, _, rest = line.partition(" ")
            i = index.get(nonce)
            if i is None or i in verdicts:
                continue  # not written by the harness: ignored
            status, _, payload = rest.partition(" ")
            if status not in ("passed", "failed", "error", "timeout", "memory"):
                continue
            try:
                fb = json.loads(payload) if payload and payload != "{}" else {}
            except json.JSONDecodeError:
                fb = {}
            text = "\n".join(f"{k}: {v}" for k, v in fb.items())
            verdicts[i] = TestResult(
                i, status, f"test: {tests[i].code}\n{text}"[: self.limits.output_chars]
            )  # type: ignore[arg-type]
        missing_status, why = self._missing(info)
        results = [
            verdicts.get(i) or TestResult(i, missing_status, f"test: {t.code}\n{why}")
            for i, t in enumerate(tests)
        ]
        return CheckResult(
            status=_worst([r.status for r in results]),
            tests=results,
            wall_s=time.perf_counter() - start,
            stdout=stdout,
            stderr=stderr,
            exit=info,
        )

    @staticmethod
    def _missing(info: dict[str, Any]) -> tuple[Status, str]:
        if info.get("timed_out") or info.get("name") == "SIGXCPU":
            return "timeout", "not run: the program ran past its time limit and was killed"
        if "signal" in info:
            return "killed", f"not run: the process died of {info['name']}"
        if info.get("code") == 70:
            return "error", "not run: the sandbox could not set up the run"
        return "killed", f"not run: the process ended early (exit {info.get('code', '?')})"

    def check_stdio(self, program: str, tests: list[TestCase]) -> CheckResult:
        if not tests:
            raise ValueError("no tests to run")
        start = time.perf_counter()
        results, last = [], {}
        out_all, err_all = "", ""
        for i, t in enumerate(tests):
            slot, tmpdir, here, uid = self._slot()
            try:
                stdin = Path(here, "stdin")
                try:
                    stdin.write_text(t.input)
                except OSError as e:  # e.g. larger than the run folder's cap
                    results.append(
                        TestResult(i, "error", f"the test's input could not be written: {e}")
                    )
                    continue
                if uid is not None:
                    os.chown(stdin, uid, uid)
                timeout = self.limits.test_timeout_s
                req = {"kind": "stdio", "program": program, "limits": self._limits(uid, timeout)}
                _, info = self._launch(req, slot, tmpdir, timeout)
            finally:
                out, err = self._finish(slot, here)
            last, out_all, err_all = info, out_all or out, err_all or err
            shown = f"input: {t.input[:200]!r}\nexpected: {t.output[:200]!r}\ngot: {out[:200]!r}"
            if info.get("timed_out") or info.get("name") == "SIGXCPU":
                results.append(TestResult(i, "timeout", shown + f"\nerror: ran past {timeout:g} s"))
            elif info.get("code") == 3:
                results.append(TestResult(i, "memory", shown + "\nerror: MemoryError"))
            elif "signal" in info:
                results.append(TestResult(i, "killed", shown + f"\nerror: died of {info['name']}"))
            elif info.get("code", 0) != 0:
                results.append(TestResult(i, "error", shown + f"\nerror: {err[-600:]}"))
            elif out == t.output or _normalise(out) == _normalise(t.output):
                results.append(TestResult(i, "passed", ""))
            else:
                results.append(TestResult(i, "failed", shown))
        return CheckResult(
            status=_worst([r.status for r in results]),
            tests=results,
            wall_s=time.perf_counter() - start,
            stdout=out_all,
            stderr=err_all,
            exit=last,
        )
