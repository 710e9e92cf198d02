"""What runs in a run's process (untrusted from its first program byte on).

`start` applies the run-time isolation layers in their fixed order, then hands over to the
program: a function program is loaded and then serves the checker's calls over the call
channel (each argument and result plain data, see protocol.encode); a stdio program runs as
`__main__` on the memfds the supervisor gave it. Nothing here holds a test, an expected value
or a verdict: whatever the program does to this process (its own memory, frames, builtins,
this module) it can only change what it answers, never how the answer is judged.
"""

from __future__ import annotations

import _signal
import builtins
import os
import random
import signal
import socket
import sys
import traceback
from typing import Any

from . import protocol
from .layers import _sys, audit, creds, rlimits
from .protocol import Exit

# plain ints, and _signal's functions: signal's wrappers build an enum per call (and every
# object a run touches is a page it copies)
_RESET_SIGNALS = tuple(
    int(s) for s in (signal.SIGCHLD, signal.SIGPIPE, signal.SIGINT, signal.SIGTERM)
)
_SIGALRM, _SIGXFSZ, _ITIMER_REAL = int(signal.SIGALRM), int(signal.SIGXFSZ), signal.ITIMER_REAL
SPARE_NAME, RUN_NAME = b"bdc-spare", b"bdc-sandbox-run"  # in ps: waiting for a program, running one
_MAX_CALL_BYTES = 64 << 20  # what the checker sends (trusted): a test's arguments


class _Timeout(BaseException):
    """The per-call alarm; a BaseException so `except Exception` in a program lets it by."""


def _on_alarm(signum: int, frame: Any) -> None:
    raise _Timeout


def _describe(exc: BaseException, limit: int = 800) -> str:
    """Type, message and the program's lines of the traceback (this process's own view)."""
    try:
        head = f"{type(exc).__name__}: {exc}"[:300]
        frames = [
            f"<program> line {f.lineno} in {f.name}"
            for f in traceback.extract_tb(exc.__traceback__)
            if f.filename == "<program>"
        ]
        return (head + ("\n  " + "\n  ".join(frames[-4:]) if frames else ""))[:limit]
    except BaseException:  # noqa: BLE001 - a program's exception that cannot even be shown
        return "an exception that could not be described"


def _status(exc: BaseException) -> str:
    if isinstance(exc, _Timeout):
        return "timeout"
    if isinstance(exc, MemoryError):
        return "memory"
    return "error"


def _setup_failed(e: BaseException) -> None:
    try:
        os.write(2, f"sandbox setup failed: {type(e).__name__}: {e}\n".encode())
    except OSError:
        pass
    os._exit(Exit.SETUP_FAILED)


def spare(sock: socket.socket, uid: int | None, run_filter: Any) -> None:
    """A run forked ahead of its request, in the slot's idle time: identity and the run's
    filter are set, then it waits for the request (and its descriptors) from the slot, and
    goes on as `start`. Never returns."""
    try:
        os.setsid()  # kill(0) by the program reaches its own processes only
        random.seed()  # runs do not share the template's stream
        for s in _RESET_SIGNALS:
            _signal.signal(s, _signal.SIG_DFL)
        creds.apply(uid)
        if run_filter is not None:
            run_filter.install()  # no new processes, no sendmsg: see layers/seccomp.py
    except BaseException as e:  # noqa: BLE001
        _setup_failed(e)
    try:
        req, fds = protocol.recv_msg(sock)
    except (EOFError, OSError, ValueError):
        os._exit(0)  # the slot is gone, or has no request for this spare
    sock.close()
    _start(req, fds, uid)


def _start(req: dict, fds: list[int], uid: int | None) -> None:
    try:
        _sys.set_name(RUN_NAME)
        limits = req["limits"]
        first, out, err = fds
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(first if req["kind"] == "stdio" else null, 0)
        os.dup2(out, 1)
        os.dup2(err, 2)
        chan = None
        if req["kind"] == "function":
            os.dup2(first, 3)
            chan = socket.socket(fileno=3)  # before the audit hook, which refuses sockets
        os.closerange(4 if chan is not None else 3, 1 << 16)
        rlimits.apply(limits, uid)  # lowering only: no privilege needed
        _signal.signal(_SIGXFSZ, _signal.SIG_IGN)  # oversized output: an error, not a crash
        if limits.get("audit_hook", True):
            audit.install()
    except BaseException as e:  # noqa: BLE001
        _setup_failed(e)
    if req["kind"] == "function":
        code = serve_calls(chan, req)
    else:
        code = run_stdio(req)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001 - e.g. past RLIMIT_FSIZE: keep what was written
            pass
    os._exit(code)


def _load(program: str, per_test: float) -> tuple[dict, dict]:
    ns: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
    _signal.signal(_SIGALRM, _on_alarm)
    _signal.setitimer(_ITIMER_REAL, per_test)
    try:
        exec(compile(program, "<program>", "exec"), ns)
    except BaseException as e:  # noqa: BLE001 - SystemExit and friends are program errors
        _signal.setitimer(_ITIMER_REAL, 0)
        error = "while loading the program: " + _describe(e)
        return ns, {"loaded": False, "status": _status(e), "error": error}
    _signal.setitimer(_ITIMER_REAL, 0)
    names = [k for k, v in list(ns.items())[:4096] if type(k) is str and callable(v)]
    return ns, {"loaded": True, "names": names[:512]}


def _call(ns: dict, msg: dict, per_test: float) -> dict:
    f = ns.get(msg["call"])
    if not callable(f):
        return {"raised": "NameError", "error": f"the program defines no function {msg['call']}"}
    args = protocol.decode(msg["args"])
    kwargs = protocol.decode(msg["kwargs"])
    _signal.signal(_SIGALRM, _on_alarm)
    _signal.setitimer(_ITIMER_REAL, per_test)
    try:
        value = f(*args, **kwargs)
        _signal.setitimer(_ITIMER_REAL, 0)
    except BaseException as e:  # noqa: BLE001
        _signal.setitimer(_ITIMER_REAL, 0)
        status = _status(e)
        if status != "error":
            return {status: True}
        return {"raised": type(e).__name__[:100], "error": _describe(e)}
    try:
        return {"ok": protocol.encode(value)}
    except (TypeError, RecursionError) as e:
        return {"bad": f"returned {type(value).__name__} ({e}); only plain values (numbers, "
                "strings, bytes, None, lists, tuples, dicts, sets) cross to the tests"}  # fmt: skip


def _reply(chan: socket.socket, ns: dict, call: list | dict, per_test: float) -> None:
    reply = _call(ns, call, per_test)
    reply["id"] = call["id"]
    try:
        protocol.send_call(chan, reply)
    except (TypeError, ValueError):  # a message of the program's that is not JSON
        protocol.send_call(chan, {"id": call["id"], "raised": "Error", "error": "unreadable"})


def serve_calls(chan: socket.socket, req: dict) -> int:
    """Load, answer the foreseen calls at once, then serve calls until the channel closes."""
    per_test = float(req["limits"]["test_timeout_s"])
    ns, hello = _load(req["program"], per_test)
    protocol.send_call(chan, hello)
    if not hello["loaded"]:
        return Exit.OK
    for call in req.get("calls", ()):
        _reply(chan, ns, call, per_test)
    reader = protocol.Reader(chan, _MAX_CALL_BYTES)
    while True:
        try:
            msg = reader.recv()
        except protocol.ChannelError:
            return Exit.OK  # the checker is done (or gone)
        _reply(chan, ns, msg, per_test)


def run_stdio(req: dict) -> int:
    ns = {"__name__": "__main__", "__builtins__": builtins}
    try:
        exec(compile(req["program"], "<program>", "exec"), ns)
    except SystemExit as e:
        return Exit.OK if e.code in (None, 0) else Exit.PROGRAM_ERROR
    except MemoryError:
        return Exit.MEMORY
    except BaseException as e:  # noqa: BLE001
        try:
            sys.stderr.write(_describe(e) + "\n")
        except BaseException:  # noqa: BLE001
            pass
        return Exit.PROGRAM_ERROR
    return Exit.OK


# a trusted program that warm_up() serves in the template: code of the kind programs are,
# with calls that return, raise and return what is not plain data
_WARM_PROGRAM = """
import math
from typing import List


def solve(xs: List[int], k: int = 2) -> list:
    out = []
    for x in xs:
        if x % k == 0 and x * k not in out and not math.isnan(float(x)):
            out.append(x * k)
    return sorted(out) if {str(v): v for v in out} else []


def bad(x):
    return iter([x])
"""
_WARM_CALLS = (
    ("solve", [[1, 2, 3, 4]], {}), ("solve", [[6, 9, 9.5, "a"]], {"k": 3}), ("solve", [None], {}),
    ("bad", [(1, 2.5, {"a": {1, 2}})], {}), ("solve", [list(range(50))], {}),
)  # fmt: skip


def warm_up(rounds: int = 12) -> list[dict]:
    """In the template, once, before the first clone: serve a trusted program's calls here, so
    that what a first run does once per process (specialising the bytecode of this module and
    of json, filling caches, interning names) happens once instead of in every run, where each
    such write copies a page shared with the template. Leaves the handlers as they were."""
    handler = signal.getsignal(signal.SIGALRM)
    replies: list[dict] = []
    try:
        for _ in range(rounds):
            ours, theirs = socket.socketpair()
            with ours, theirs:
                calls = [
                    {
                        "call": name,
                        "args": protocol.encode(tuple(args)),
                        "kwargs": protocol.encode(kwargs),
                        "id": k,
                    }  # fmt: skip
                    for k, (name, args, kwargs) in enumerate(_WARM_CALLS)
                ]
                live = dict(calls[0], id="live")
                protocol.send_call(ours, live)
                ours.shutdown(socket.SHUT_WR)
                req = {"program": _WARM_PROGRAM, "limits": {"test_timeout_s": 5.0}, "calls": calls}
                serve_calls(theirs, req)
                reader = protocol.Reader(ours, 1 << 20)
                replies = [reader.recv() for _ in range(len(calls) + 2)]
    finally:
        _signal.setitimer(_ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, handler)
    return replies
