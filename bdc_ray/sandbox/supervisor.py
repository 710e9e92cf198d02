"""The trusted side: runs untrusted programs against tests through the warm template.

    sb = Sandbox(concurrency=4)
    result = sb.check(program, problem, tests="public")   # or "hidden", "all", [TestCase]
    result.passed, result.pass_rate, result.status, result.tests[i].feedback

Thread-safe: `concurrency` runs proceed at once, each in its own slot. A function check is
one run of the program (cloned by the template into namespaces of its own) answering the
checker's calls (checker.py, in this process: the tests never enter the run); a stdio check
is one run per test, its stdin, stdout and stderr memfds this process made. The template is
restarted if it dies; a run that was in flight then reports `killed`. Refuses to start when
an isolation layer the host cannot provide is required (see `Limits.allow_missing`).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..data.problems import Problem, TestCase
from . import checker
from .protocol import LAYERS, Exit, recv_msg, send_msg

log = logging.getLogger(__name__)

Status = Literal["passed", "failed", "error", "timeout", "memory", "killed"]
_SEVERITY = ["killed", "timeout", "memory", "error", "failed"]
_BASE_UID = 62000  # slot uids as root: 62000, 62001, ... (no passwd entry needed)


class SandboxUnavailable(RuntimeError):
    """An isolation layer the sandbox requires is not available on this host."""


@dataclass(frozen=True)
class Limits:
    test_timeout_s: float = 3.0  # per test
    total_timeout_s: float = 10.0  # whole program (all its tests), wall clock
    memory_mb: int = 1024  # address space
    file_mb: int = 16  # largest file (stdout and stderr included)
    open_files: int = 64
    processes: int = 32  # per slot uid (threads count); as root only
    output_chars: int = 4096  # kept of stdout/stderr and feedback
    run_dir_mb: int = 64  # a run's private /tmp (and /dev/shm), in all
    run_dir_inodes: int = 4096
    reply_kb: int = 1024  # largest answer of one call, as plain data
    # site-packages packages runs may import (read-only); the standard library always
    packages: tuple[str, ...] = ()
    # isolation layers (protocol.LAYERS) the sandbox may run without where the host lacks them;
    # every result then names them in `CheckResult.isolation_missing`
    allow_missing: tuple[str, ...] = ()
    audit_hook: bool = True  # defence in depth; the kernel layers hold without it

    def __post_init__(self) -> None:
        for name in ("packages", "allow_missing"):  # lists arrive from configs and Ray
            object.__setattr__(self, name, tuple(getattr(self, name)))
        unknown = sorted(set(self.allow_missing) - set(LAYERS))
        if unknown:
            raise ValueError(
                f"allow_missing names no isolation layer: {unknown}; layers: {list(LAYERS)}"
            )
        for name in ("test_timeout_s", "total_timeout_s"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0 < value < float("inf")):
                raise ValueError(
                    f"Limits.{name} must be a finite number of seconds > 0, got {value!r}"
                )


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
    isolation_missing: tuple[str, ...] = ()  # layers that were not in force (allowed so)

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


def _shown(value: Any, limit: int = 300) -> str:
    """repr of a plain value a program returned, bounded (an int of 5000 digits has no repr)."""
    try:
        text = repr(value)
    except (ValueError, RecursionError):
        return f"<{type(value).__name__} too large to show>"
    return text if len(text) <= limit else text[:limit] + "..."


def _normalise(text: str) -> list[str]:
    return text.split()


class Sandbox:
    def __init__(
        self,
        concurrency: int | None = None,
        limits: Limits | None = None,
        root_dir: str | None = None,
    ) -> None:
        self.limits = limits or Limits()
        self.concurrency = concurrency or max(1, os.cpu_count() or 1)
        self.drop = os.geteuid() == 0  # a uid per slot; otherwise a user namespace's one uid
        # where the template mounts its minimal root before pivoting into it: an existing folder,
        # covered only in the template's own mount namespace, so nothing is made on the host
        # (and nothing is left there by a Sandbox that is never closed)
        self.root = Path(os.path.realpath(root_dir or tempfile.gettempdir()))
        self._slots: queue.Queue[int] = queue.Queue()
        for i in range(self.concurrency):
            self._slots.put(i)
        self._start_lock = threading.Lock()
        self._slot_socks: list[socket.socket] = []
        self._proc: subprocess.Popen | None = None
        self._gone = False  # set by the reader when the running template's socket closes
        self._sock: socket.socket | None = None
        self._limits_of: Limits | None = None
        self._limits_dict: dict[str, Any] = {}
        self.isolation: dict[str, Any] = {}
        self.isolation_missing: tuple[str, ...] = ()
        self._start()

    # ------------------------------------------------------------------ template lifecycle
    def _start(self) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "HOME": "/tmp",
            "TMPDIR": "/tmp",
            "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONHASHSEED": "0",
            "OPENBLAS_NUM_THREADS": "1",
            "OMP_NUM_THREADS": "1",
            # every library symbol resolved at the template's start: else each run resolves
            # (and so writes, copying a page) the ones the template had not called yet
            "LD_BIND_NOW": "1",
        }
        want = {
            "slots": self.concurrency,
            "uid_base": _BASE_UID if self.drop else None,
            "run_dir_mb": self.limits.run_dir_mb,
            "run_dir_inodes": self.limits.run_dir_inodes,
            "root": str(self.root),
            "packages": list(self.limits.packages),
            "allow_missing": list(self.limits.allow_missing),
            "audit_hook": self.limits.audit_hook,
        }
        self._proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bdc_ray.sandbox.template",
                str(child.fileno()),
                json.dumps(want),
            ],
            pass_fds=[child.fileno()],
            env=env,
            cwd="/",
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        child.close()
        parent.settimeout(60)
        try:
            ready, fds = recv_msg(parent)
        except (EOFError, OSError, ValueError) as e:
            self._proc.kill()
            raise SandboxUnavailable(f"the sandbox template did not start: {e!r}") from None
        parent.settimeout(None)
        if not ready.get("ready"):
            self._proc.wait(10)
            raise SandboxUnavailable(f"the sandbox template could not start: {ready.get('error')}")
        layers = ready["layers"]
        missing = tuple(name for name in LAYERS if not layers[name]["active"])
        refused = [name for name in missing if layers[name]["required"]]
        if refused:
            parent.close()
            self._proc.kill()
            self._proc.wait(10)
            why = "; ".join(f"{n}: {layers[n]['detail']}" for n in refused)
            raise SandboxUnavailable(
                f"the sandbox cannot isolate programs on this host ({why}). To run with weaker "
                f"isolation anyway, allow it explicitly: Limits(allow_missing={tuple(refused)!r}) "
                "(config: eval.sandbox_allow_missing); every result is then marked"
            )
        for name in missing:
            log.warning("sandbox running without %s: %s", name, layers[name]["detail"])
        slots = [socket.socket(fileno=fd) for fd in fds]
        for i, s in enumerate(slots):
            s.settimeout(60)
            hello, _ = recv_msg(s)
            if hello.get("ready") != i:
                self._proc.kill()
                raise SandboxUnavailable(f"a sandbox slot did not start: {hello.get('error')}")
        self._slot_socks, self._sock, self._gone = slots, parent, False
        self.isolation_missing = missing
        self.isolation = {
            **{name: layers[name]["active"] for name in LAYERS},
            "layers": layers,
            "missing": list(missing),
            "uid_per_slot": self.drop,
        }

    def _alive(self) -> bool:
        # a slot's socket failing marks it gone (no wait4 per run to learn that)
        return self._proc is not None and not self._gone and self._proc.poll() is None

    def _ensure(self) -> None:
        if self._alive():
            return
        with self._start_lock:
            if not self._alive():
                log.warning("sandbox template died; restarting it")
                self._stop_template()
                self._start()

    def _stop_template(self) -> None:
        for sock in [self._sock, *self._slot_socks]:
            try:
                if sock is not None:
                    sock.close()
            except OSError:
                pass
        if self._proc is not None and self._proc.poll() is None:
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)
            except OSError:
                pass
            self._proc.wait(10)

    def close(self) -> None:
        self._stop_template()  # its namespaces, every run and every mount go with it

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ one run
    def _slot(self) -> int:
        slot = self._slots.get()
        try:
            self._ensure()
        except BaseException:
            self._slots.put(slot)
            raise
        return slot

    def _limits(self, slot: int, timeout: float) -> dict[str, Any]:
        if self._limits_of is not self.limits:  # Limits is frozen: one dict per instance
            self._limits_dict, self._limits_of = asdict(self.limits), self.limits
        uid = _BASE_UID + slot if self.drop else None
        return {**self._limits_dict, "cpu_s": int(timeout) + 1, "uid": uid}

    def _send_run(self, slot: int, req: dict, fds: list[int]) -> str | None:
        """Start a run in `slot`: its id, or None when the template is gone."""
        req.update(op="run", id=secrets.token_hex(8))
        try:
            self._slot_socks[slot].settimeout(None)
            send_msg(self._slot_socks[slot], req, fds)
        except OSError:
            self._gone = True
            return None
        return req["id"]

    def _wait_end(
        self, slot: int, rid: str, timeout: float, kill: bool = False
    ) -> tuple[int | None, bool]:
        """The run's wait status once every process of it is gone (its slot killed, reaped and
        wiped them all), and whether it was killed for running past `timeout`."""
        sock = self._slot_socks[slot]
        killed = kill
        try:
            if not kill:
                sock.settimeout(max(0.001, timeout))
                try:
                    return recv_msg(sock)[0].get("status"), False
                except TimeoutError:
                    killed = True
            send_msg(sock, {"op": "kill", "id": rid})
            sock.settimeout(15)
            return recv_msg(sock)[0].get("status"), killed
        except (OSError, EOFError, ValueError):
            self._gone = True  # the next check starts a new template
            return None, killed

    def _read(self, fd: int) -> str:
        try:
            data = os.pread(fd, 4 * self.limits.output_chars, 0)
        except OSError:
            return ""
        return data.decode("utf-8", "replace")[: self.limits.output_chars]

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
        per_test = self.limits.test_timeout_s
        budget = min(self.limits.total_timeout_s, per_test * len(tests) + 1.0)
        src = checker.compiled(preamble, prompt, tuple((t.code, tuple(t.setup)) for t in tests))
        helpers = checker.helpers(src, entry_point)
        foreseen = checker.foreseen(src, entry_point)
        slot = self._slot()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        out, err = os.memfd_create("bdc-stdout"), os.memfd_create("bdc-stderr")
        info: dict[str, Any] = {"known": False, "error": "the sandbox template is gone"}
        try:
            req = {
                "kind": "function",
                "program": program,
                "entry_point": entry_point,
                "slot": slot,
                "limits": self._limits(slot, budget),
                "calls": [c for c in foreseen if c is not None],
            }
            rid = self._send_run(slot, req, [theirs.fileno(), out, err])
            theirs.close()
            if rid is None:
                verdicts = [
                    ("killed", "not run: the sandbox template is gone", checker.NOTHING)
                ] * len(tests)
            else:
                end = time.monotonic() + budget
                max_reply = self.limits.reply_kb << 10
                verdicts, gone = checker.run_tests(
                    ours, src, entry_point, per_test, end, max_reply, helpers, foreseen
                )
                ours.close()  # the run's end of the channel reads EOF: it exits
                status, killed = self._wait_end(slot, rid, end - time.monotonic() + 1.0, kill=gone)
                info = {**_exit_info(status), "timed_out": killed}
            stdout, stderr = self._read(out), self._read(err)
        finally:
            ours.close()
            theirs.close()
            os.close(out)
            os.close(err)
            self._slots.put(slot)
        results = []
        for i, (t, (status, why, got)) in enumerate(zip(tests, verdicts, strict=True)):
            status, why = self._explain(status, why, info, stderr)
            text = f"test: {t.code}\n{why}" if why else ""
            if status != "passed" and got is not checker.NOTHING:
                text += f"\ngot: {_shown(got)}"
            results.append(TestResult(i, status, text[: self.limits.output_chars]))  # type: ignore[arg-type]
        return CheckResult(
            status=_worst([r.status for r in results]),
            tests=results,
            wall_s=time.perf_counter() - start,
            stdout=stdout,
            stderr=stderr,
            exit=info,
            isolation_missing=self.isolation_missing,
        )

    @staticmethod
    def _explain(status: str, why: str, info: dict[str, Any], stderr: str) -> tuple[str, str]:
        """A test the run could not answer, in the words of how the run ended."""
        if status not in ("killed", "timeout") or "not run" not in why and "ended" not in why:
            return status, why
        if info.get("name") == "SIGXCPU":
            return "timeout", f"{why} (it ran past its CPU time limit)"
        if info.get("code") == Exit.SETUP_FAILED:
            return "error", f"not run: the sandbox could not set up the run: {stderr[-300:]}"
        if "signal" in info:
            return status, f"{why} (it died of {info['name']})"
        if "code" in info:
            return status, f"{why} (exit {info['code']})"
        return status, why

    def check_stdio(self, program: str, tests: list[TestCase]) -> CheckResult:
        if not tests:
            raise ValueError("no tests to run")
        start = time.perf_counter()
        results, last = [], {}
        out_all, err_all = "", ""
        timeout = self.limits.test_timeout_s
        for i, t in enumerate(tests):
            slot = self._slot()
            stdin = os.memfd_create("bdc-stdin")
            out, err = os.memfd_create("bdc-stdout"), os.memfd_create("bdc-stderr")
            try:
                data = t.input.encode()
                view = memoryview(data)
                while view:
                    view = view[os.write(stdin, view) :]
                os.lseek(stdin, 0, os.SEEK_SET)
                req = {"kind": "stdio", "program": program, "entry_point": "", "slot": slot,
                       "limits": self._limits(slot, timeout)}  # fmt: skip
                rid = self._send_run(slot, req, [stdin, out, err])
                if rid is None:
                    status, killed = None, False
                else:
                    status, killed = self._wait_end(slot, rid, timeout)
                info = {**_exit_info(status), "timed_out": killed}
                got, stderr = self._read(out), self._read(err)
            finally:
                for fd in (stdin, out, err):
                    os.close(fd)
                self._slots.put(slot)
            last, out_all, err_all = info, out_all or got, err_all or stderr
            results.append(self._stdio_result(i, t, info, got, stderr, timeout))
        return CheckResult(
            status=_worst([r.status for r in results]),
            tests=results,
            wall_s=time.perf_counter() - start,
            stdout=out_all,
            stderr=err_all,
            exit=last,
            isolation_missing=self.isolation_missing,
        )

    @staticmethod
    def _stdio_result(
        i: int, t: TestCase, info: dict[str, Any], out: str, err: str, timeout: float
    ) -> TestResult:
        shown = f"input: {t.input[:200]!r}\nexpected: {t.output[:200]!r}\ngot: {out[:200]!r}"
        if info.get("timed_out") or info.get("name") == "SIGXCPU":
            return TestResult(i, "timeout", shown + f"\nerror: ran past {timeout:g} s")
        if info.get("code") == Exit.MEMORY:
            return TestResult(i, "memory", shown + "\nerror: MemoryError")
        if info.get("code") == Exit.SETUP_FAILED:
            return TestResult(
                i, "error", f"not run: the sandbox could not set up the run: {err[-300:]}"
            )
        if "signal" in info:
            return TestResult(i, "killed", shown + f"\nerror: died of {info['name']}")
        if "code" not in info:
            return TestResult(i, "killed", shown + "\nerror: the sandbox template is gone")
        if info["code"] != 0:
            return TestResult(i, "error", shown + f"\nerror: {err[-600:]}")
        if out == t.output or _normalise(out) == _normalise(t.output):
            return TestResult(i, "passed", "")
        return TestResult(i, "failed", shown)
