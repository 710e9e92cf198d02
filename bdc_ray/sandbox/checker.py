"""The checker: runs a function problem's tests in the supervisor's (trusted) process and calls
the candidate in its run over the call channel.

A test is the problem's own code (prompt helpers, preamble, setup, asserts), executed here in
a fresh namespace per test. `candidate` (and the entry point's name, and any other function of
the program a test calls by name) is a proxy: it sends the arguments as plain data, waits for
the reply within the test's time, and returns a value this process built from plain data, or
raises. So a test's comparisons only ever see values of this process's own making, and no
memory, frame, descriptor or object of the checker is the program's to read or replace: the
program's process holds neither the tests nor their expected values nor the verdict.
"""

from __future__ import annotations

import builtins
import functools
import socket
import time
from dataclasses import dataclass
from typing import Any

from . import protocol

NOTHING = object()  # no value came back (unlike None, which a program may return)
_STATUSES = ("passed", "failed", "error", "timeout", "memory", "killed")
_GRACE_S = 0.25  # past a call's own alarm in the run, before the checker gives up on it
# exceptions a program's raising may not turn into control flow of the test's (StopIteration
# ends a `map` or generator the test iterates early, as if the test had finished)
_EXCLUDED = {"SystemExit", "KeyboardInterrupt", "GeneratorExit", "BaseException", "StopIteration",
             "StopAsyncIteration"}  # fmt: skip
_BUILTIN_NAMES = frozenset(dir(builtins))


class ProgramError(Exception):
    """The program raised (its type is one the test could catch: see _raised)."""


class UntrustedReturn(Exception):
    """The program returned something that is not plain data."""


class _CallTimeout(BaseException):
    pass


class _CallMemory(BaseException):
    pass


class _RunGone(BaseException):
    """The run cannot answer any more (died, hung past its time, broke the protocol)."""

    def __init__(self, status: str, why: str) -> None:
        super().__init__(why)
        self.status, self.why = status, why


@functools.lru_cache(maxsize=256)
def _program_exception(name: str) -> type[BaseException]:
    """A class the test's `except ValueError` catches when the program raised ValueError."""
    base = getattr(builtins, name, None)
    if isinstance(base, type) and issubclass(base, Exception) and name not in _EXCLUDED:
        try:
            return type(name, (base, ProgramError), {})
        except TypeError:  # a layout that does not combine
            pass
    return ProgramError


def _raised(name: str, error: str) -> BaseException:
    try:
        return _program_exception(name)(error)
    except TypeError:  # e.g. UnicodeDecodeError's constructor wants five arguments
        return ProgramError(error)


@dataclass(frozen=True)
class Compiled:
    prompt: Any  # code, None (nothing to run) or the error text
    preamble: Any
    tests: tuple[tuple[Any, Any], ...]  # (setup, assert) per test


def _code(source: str, name: str = "<test>") -> Any:
    if not source.strip():
        return None
    try:
        return compile(source, name, "exec")
    except Exception as e:  # noqa: BLE001 - SyntaxError, ValueError (NUL bytes), ...
        return f"the test does not compile: {type(e).__name__}: {e}"


@functools.lru_cache(maxsize=4096)
def compiled(
    preamble: str, prompt: str, tests: tuple[tuple[str, tuple[str, ...]], ...]
) -> Compiled:
    """A problem's trusted sources, compiled once per process (equal sources share it)."""
    return Compiled(
        _code(prompt, "<prompt>"),
        _code(preamble),
        tuple((_code("\n".join(setup)), _code(code)) for code, setup in tests),
    )


class _Recorded(BaseException):
    """Raised by the recorder at a test's first call: the call is what the run answers ahead."""


@functools.lru_cache(maxsize=4096)
def foreseen(src: Compiled, entry_point: str) -> tuple[dict | None, ...]:
    """record() once per problem's sources (every check of a problem foresees the same calls; a
    test whose call comes out different, e.g. from a random draw, is called live anyway)."""
    return tuple(record(src, entry_point, helpers(src, entry_point)))


def record(src: Compiled, entry_point: str, helpers: dict[str, Any]) -> list[dict | None]:
    """Each test's first call, found by running the test up to it with a recorder in place of
    the program: the run answers them all as soon as it has loaded, and the tests then read
    the answers (a test whose call comes out different on its real run calls live instead).
    None for a test that makes no call or whose arguments are not plain data."""
    calls: list[dict | None] = []
    for setup, code in src.tests:
        got: list[dict] = []

        def recorder(*args: Any, _got: list = got, **kwargs: Any) -> Any:
            call = {"args": protocol.encode(args), "kwargs": protocol.encode(kwargs)}
            _got.append({"call": entry_point, **call})
            raise _Recorded

        ns: dict[str, Any] = {"__name__": "__check__", "__builtins__": builtins, **helpers}
        ns["candidate"] = ns[entry_point] = recorder
        try:
            for part in (src.preamble, setup, code):
                if part is not None and type(part) is not str:
                    exec(part, ns)
        except KeyboardInterrupt:
            raise
        except BaseException:  # noqa: BLE001 - _Recorded, or the test failing without a call
            pass
        calls.append(dict(got[0], id=len(calls)) if got else None)
    return calls


class _Channel:
    def __init__(
        self,
        sock: socket.socket,
        per_test: float,
        deadline: float,
        max_reply: int,
        foreseen: tuple[dict | None, ...] | list[dict | None],
    ) -> None:
        self.sock, self.per_test, self.deadline = sock, per_test, deadline
        self.reader = protocol.Reader(sock, max_reply)
        self.max_reply, self.buffered = max_reply, 0
        self.gone: _RunGone | None = None
        self.last: dict[str, Any] = {}
        self.replies: dict[Any, dict] = {}
        self.foreseen = {c["id"]: c for c in foreseen if c is not None}
        self.pending = set(self.foreseen)  # foreseen calls whose answers were not read yet
        self.mark = time.monotonic()  # when the run last answered (it answers in order)
        self.test: int | None = None  # the test running now, whose first call may be foreseen
        self.live = 0

    def recv(self, wait_s: float) -> dict:
        until = min(self.deadline, self.mark + wait_s)
        try:
            msg = self.reader.recv(until)
            self.mark = time.monotonic()
            return msg
        except protocol.ChannelTimeout:
            self.gone = _RunGone("timeout", f"no answer within {self.per_test:g} s")
        except protocol.ChannelClosed:
            self.gone = _RunGone("killed", "the program's process ended")
        except protocol.ChannelError as e:
            self.gone = _RunGone("error", f"the program broke the call protocol: {e}")
        raise self.gone

    def _await(self, key: Any) -> dict:
        while key not in self.replies:
            msg = self.recv(self.per_test + _GRACE_S)
            rid = msg.get("id")
            # only answers to calls made or foreseen and not yet read are kept: a run cannot
            # fill the checker's memory with messages nobody asked for
            if rid != key and (
                type(rid) is not int or rid not in self.pending or rid in self.replies
            ):
                self.gone = _RunGone("error", "the program sent an answer nobody asked for")
                raise self.gone
            self.replies[rid] = (msg, self.reader.last_size)
            self.buffered += self.reader.last_size
            if self.buffered > 16 * self.max_reply:
                self.gone = _RunGone("error", "the program's unread answers are too large")
                raise self.gone
        self.pending.discard(key)
        msg, size = self.replies.pop(key)
        self.buffered -= size
        return msg

    def call(self, name: str, args: tuple, kwargs: dict) -> Any:
        if self.gone is not None:
            raise self.gone
        try:
            msg = {"call": name, "args": protocol.encode(args), "kwargs": protocol.encode(kwargs)}
        except TypeError as e:
            raise TypeError(f"a test passed an argument that is not plain data: {e}") from None
        ahead = self.foreseen.pop(self.test, None)
        if ahead is not None and {**msg, "id": self.test} != ahead:
            self._await(self.test)  # its answer is not this call's: read and dropped
        if ahead is not None and {**msg, "id": self.test} == ahead:
            reply = self._await(self.test)
        else:
            self.live += 1
            msg["id"] = key = f"live{self.live}"
            try:
                protocol.send_call(self.sock, msg)
            except OSError:
                self.gone = _RunGone("killed", "the program's process ended")
                raise self.gone from None
            reply = self._await(key)
        if "ok" in reply:
            try:
                value = protocol.decode(reply["ok"])
            except protocol.ChannelError as e:
                self.gone = _RunGone("error", f"the program broke the call protocol: {e}")
                raise self.gone from None
            self.last = {"value": value}
            return value
        if reply.get("timeout") is True:
            raise _CallTimeout
        if reply.get("memory") is True:
            raise _CallMemory
        if type(reply.get("bad")) is str:
            raise UntrustedReturn(reply["bad"][:400])
        if type(reply.get("raised")) is str and type(reply.get("error")) is str:
            raise _raised(reply["raised"][:100], reply["error"][:800])
        self.gone = _RunGone("error", "the program sent a reply of no known kind")
        raise self.gone


def _proxy(chan: _Channel, name: str) -> Any:
    def candidate(*args: Any, **kwargs: Any) -> Any:
        return chan.call(name, args, kwargs)

    candidate.__name__ = name
    return candidate


def _classify(exc: BaseException, per_test: float) -> tuple[str, str]:
    if isinstance(exc, _RunGone):
        return exc.status, exc.why
    if isinstance(exc, _CallTimeout):
        return "timeout", f"the call ran past {per_test:g} s"
    if isinstance(exc, _CallMemory | MemoryError):
        return "memory", "MemoryError"
    if isinstance(exc, ProgramError):
        return "error", str(exc)
    if isinstance(exc, AssertionError):
        return "failed", f"AssertionError{f': {exc}' if str(exc) else ''}"
    return "error", f"{type(exc).__name__}: {exc}"[:600]


def helpers(src: Compiled, entry_point: str) -> dict[str, Any]:
    """The prompt's own helpers (HumanEval tests call some, e.g. `poly`): whatever the program
    defines, the tests get these."""
    if not hasattr(src.prompt, "co_code"):
        return {}
    ns: dict[str, Any] = {"__name__": "__helpers__", "__builtins__": builtins}
    try:
        exec(src.prompt, ns)
    except BaseException:  # noqa: BLE001 - a prompt that does not run gives no helpers
        return {}
    return {k: v for k, v in ns.items() if not k.startswith("__") and k != entry_point}


def run_tests(
    sock: socket.socket,
    src: Compiled,
    entry_point: str,
    per_test: float,
    deadline: float,
    max_reply: int,
    helpers: dict[str, Any],
    foreseen: list[dict | None],
) -> tuple[list[tuple[str, str, Any]], bool]:
    """(status, feedback, got) per test, and whether the run stopped answering (it must be
    killed). `deadline` (monotonic) bounds the whole check."""
    chan = _Channel(sock, per_test, deadline, max_reply, foreseen)
    n = len(src.tests)
    try:
        hello = chan.recv(per_test + _GRACE_S)
    except _RunGone as gone:
        why = "not run: while loading the program: " + gone.why
        return [(gone.status, why, NOTHING)] * n, gone.status != "killed"
    if hello.get("loaded") is not True:
        status = hello.get("status") if hello.get("status") in _STATUSES else "error"
        error = hello.get("error") if type(hello.get("error")) is str else "it did not load"
        return [(status, error[:800], NOTHING)] * n, False
    names = hello.get("names")
    names = {x for x in names if type(x) is str} if type(names) is list else set()
    if entry_point not in names:
        return [("error", f"the program defines no function {entry_point}", NOTHING)] * n, False
    results = []
    for i, (setup, code) in enumerate(src.tests):
        chan.test = i
        if chan.gone is not None:
            results.append((chan.gone.status, f"not run: {chan.gone.why}", NOTHING))
            continue
        bad = next((c for c in (src.preamble, setup, code) if type(c) is str), None)
        if bad is not None:
            results.append(("error", bad, NOTHING))
            continue
        ns: dict[str, Any] = {"__name__": "__check__", "__builtins__": builtins, **helpers}
        # the test's own names that only the program defines (never a builtin the test uses,
        # which the program could otherwise answer for: `def abs(x): return 0`)
        extra = (set(code.co_names) & names) - helpers.keys() - _BUILTIN_NAMES
        for name in {"candidate", entry_point} | extra:
            ns[name] = _proxy(chan, entry_point if name == "candidate" else name)
        chan.last = {}
        try:
            for part in (src.preamble, setup, code):
                if part is not None:
                    exec(part, ns)
            results.append(("passed", "", NOTHING))
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # noqa: BLE001 - classified; the test is trusted code
            status, why = _classify(e, per_test)
            results.append((status, why, chan.last.get("value", NOTHING)))
    gone = chan.gone is not None and chan.gone.status != "killed"
    return results, gone
