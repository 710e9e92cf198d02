"""Everything that crosses a process boundary in the sandbox, in one place.

Three parties: the supervisor (trusted: the `Sandbox` object, which also runs the tests as the
checker), the template (trusted: a warm process that forks one run per program) and a run
(untrusted: the program's process, in its own namespaces). Two channels:

- **control** (supervisor <-> template, both trusted): length-prefixed `marshal`ed dicts, one
  `sendmsg` each, carrying descriptors as SCM_RIGHTS. Messages: `RunRequest`/`KillRequest`
  from the supervisor, `Ready` once and then `RunEnded` per run from the template.
- **call** (checker <-> run, a socketpair per function check): length-prefixed JSON. The
  run request already carries the calls the checker could foresee (each test's first call,
  recorded by running the test against a recorder, see checker.record); the run answers
  `{"loaded": ...}` once, then one reply per foreseen call, `{"id": k, ...}`, without waiting;
  later calls go `{"call": name, "args": [...], "kwargs": [...], "id": k}` and come back the
  same way, until the checker closes the channel. Every value crossing it is plain data
  (`encode`/`decode`): what the checker reads from a run is bounded in bytes and depth and
  becomes only ints, floats, strings, bytes, None, booleans and containers of them, built
  by the checker itself, so no object of the program ever meets a test's comparison.
"""

from __future__ import annotations

import array
import enum
import json
import marshal
import math
import select
import socket
import struct
import time
from dataclasses import asdict, dataclass
from typing import Any, TypedDict

_HEADER = struct.Struct("!I")
_FD_SPACE = socket.CMSG_SPACE(256 * array.array("i").itemsize)  # one per slot, at most 256


class Exit(enum.IntEnum):
    """Exit codes of a run's process (a run killed by a signal reports the signal)."""

    OK = 0
    PROGRAM_ERROR = 1  # a stdio program raised or exited non-zero
    MEMORY = 3  # a stdio program ran out of memory
    SETUP_FAILED = 70  # an isolation layer could not be applied: no program code ran


class RunRequest(TypedDict):
    op: str  # "run"
    id: str
    kind: str  # "function" | "stdio"
    program: str
    entry_point: str
    slot: int
    limits: dict[str, Any]  # Limits as a dict, plus "cpu_s" and "uid" (None: no uid drop)
    # descriptors, in order: function: [call socket, stdout, stderr]; stdio: [stdin, stdout,
    # stderr] (memfds made by the supervisor: no path of the run's is ever opened by it)


class RunEnded(TypedDict):
    id: str
    status: int  # the wait status of the run's PID 1: every process of the run is gone


@dataclass(frozen=True)
class Layer:
    """One isolation layer as the template found it: in force or not, and whether the
    sandbox refuses to run without it (`Limits.allow_missing` names the ones that may be)."""

    name: str
    active: bool
    required: bool
    detail: str = ""


# the layers in the order they are applied (template start, then every run); the docs'
# isolation table follows this order
LAYERS = (
    "user_namespace",  # not root: own uid mapping, so the rest works without privileges
    "net_namespace",  # no network at all
    "pid_namespace",  # the template's, and one per run: nothing outlives a run
    "filesystem_view",  # read-only minimal tree; per run a private, capped /tmp and own /proc
    "rlimits",  # CPU seconds, address space, file size, open files, processes
    "credentials",  # a uid per slot (root) or no capabilities (user namespace); no new privs
    "seccomp",  # system calls no test program needs fail with EPERM
    "audit_hook",  # defence in depth inside the interpreter only: no verdict depends on it
)


def send_msg(sock: socket.socket, obj: dict, fds: list[int] | None = None) -> None:
    """Control channel (trusted peers): marshal, one sendmsg."""
    data = marshal.dumps(obj)
    payload = _HEADER.pack(len(data)) + data
    if not fds:  # slots report with send(): their seccomp filter denies sendmsg
        sock.sendall(payload)
        return
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
    sent = sock.sendmsg([payload], anc)
    if sent < len(payload):  # a large message on a full socket: the rest, without descriptors
        sock.sendall(payload[sent:])


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)


def recv_msg(sock: socket.socket) -> tuple[dict, list[int]]:
    header, anc, _, _ = sock.recvmsg(_HEADER.size, _FD_SPACE)
    if not header:
        raise EOFError
    fds = array.array("i")
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    if len(header) < _HEADER.size:
        header += _recv_exact(sock, _HEADER.size - len(header))
    (n,) = _HEADER.unpack(header)
    obj = marshal.loads(_recv_exact(sock, n))
    if type(obj) is not dict:
        raise ValueError("a sandbox control message is not a dict")
    return obj, list(fds)


# ---------------------------------------------------------------------- the call channel


class ChannelError(Exception):
    """The run broke the call protocol: too large, too deep, not JSON, not plain data."""


class ChannelClosed(ChannelError):
    """The run's end of the call channel closed (it exited or died)."""


class ChannelTimeout(ChannelError):
    """No reply before the deadline."""


_ENCODER = json.JSONEncoder(separators=(",", ":"))  # built once: json.dumps(**kw) builds one a call


def send_call(sock: socket.socket, obj: dict) -> None:
    data = _ENCODER.encode(obj).encode()
    sock.sendall(_HEADER.pack(len(data)) + data)


class Reader:
    """Messages from one end of the call channel, read in large chunks: replies the run sent
    back to back arrive with one recv, and waiting is one poll, not a timeout set per read."""

    def __init__(self, sock: socket.socket, max_bytes: int) -> None:
        self.sock, self.max_bytes, self.buf = sock, max_bytes, bytearray()
        self.last_size = 0
        self.poll = select.poll()
        self.poll.register(sock, select.POLLIN)

    def _fill(self, need: int, deadline: float | None) -> None:
        while len(self.buf) < need:
            try:
                # this read only non-blocking: sends on the socket still block as they should
                chunk = self.sock.recv(max(need - len(self.buf), 1 << 16), socket.MSG_DONTWAIT)
            except BlockingIOError:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise ChannelTimeout("no reply in time") from None
                self.poll.poll(None if left is None else max(1, int(left * 1000) + 1))
                continue
            except OSError as e:
                raise ChannelClosed(f"the channel failed: {e}") from None
            if not chunk:
                raise ChannelClosed("the peer closed its channel")
            self.buf += chunk

    def recv(self, deadline: float | None = None) -> dict:
        """The next message, refused past `max_bytes` or after `deadline` (monotonic)."""
        self._fill(_HEADER.size, deadline)
        (n,) = _HEADER.unpack_from(self.buf)
        if n > self.max_bytes:
            raise ChannelError(f"a message of {n} bytes is over the limit of {self.max_bytes}")
        self._fill(_HEADER.size + n, deadline)
        self.last_size = n
        body = bytes(self.buf[_HEADER.size : _HEADER.size + n])
        del self.buf[: _HEADER.size + n]
        try:
            obj = json.loads(body)
        except (ValueError, RecursionError) as e:
            raise ChannelError(f"a message that is not JSON: {type(e).__name__}") from None
        if type(obj) is not dict:
            raise ChannelError("a message that is not an object")
        return obj


# plain data: every value is one JSON value. Scalars stand for themselves (JSON keeps int and
# float apart: 1 vs 1.0); every container is a list whose first element names its type, so a
# list is never mistaken for a tuple and dict keys may be any plain value.
_TAGS = {list: "l", tuple: "t", set: "s", frozenset: "f", dict: "d"}
MAX_DEPTH = 64


def encode(value: Any, depth: int = 0) -> Any:
    """In the run (untrusted side): a plain value as JSON-able data; TypeError otherwise."""
    t = type(value)
    if t is str or t is bool or value is None:
        return value
    if t is int:
        # beyond 2**63, hex: no decimal digit limit (sys.set_int_max_str_digits) applies
        return value if -(1 << 63) <= value < 1 << 63 else ["i", hex(value)]
    if t is float:
        return value if math.isfinite(value) else ["x", repr(value)]
    if depth >= MAX_DEPTH:
        raise TypeError(f"nested deeper than {MAX_DEPTH}")
    if t is complex:
        return ["c", encode(value.real), encode(value.imag)]
    if t is bytes:
        return ["b", value.hex()]
    if t is dict:
        return ["d", *([encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items())]
    tag = _TAGS.get(t)
    if tag is None:
        raise TypeError(f"a {t.__name__} is not plain data")
    return [tag, *(encode(v, depth + 1) for v in value)]


def _distinct_hashes(keys: list) -> None:
    """Refuse set elements or dict keys that collide: ints' hashes are not randomised, so a
    run could send thousands of keys hashing alike and have building the set take seconds of
    the checker's time (quadratic, holding the GIL). Keys a real set or dict encoded are
    distinct, and so are their hashes but for rare accidents."""
    if len(keys) > 32 and len({hash(k) for k in keys}) < len(keys) * 3 // 4:
        raise ChannelError("set elements or dict keys whose hashes collide")


_SPECIAL_FLOATS = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def decode(data: Any, depth: int = 0) -> Any:
    """In the checker (trusted side): data from a run back into plain values, built here.
    Anything else raises ChannelError."""
    t = type(data)
    if t is str or t is bool or t is int or t is float or data is None:
        return data
    if t is not list or not data or type(data[0]) is not str:
        raise ChannelError("a value that is not plain data")
    if depth >= MAX_DEPTH:
        raise ChannelError(f"a value nested deeper than {MAX_DEPTH}")
    tag, items = data[0], data[1:]
    try:
        if tag == "i" and len(items) == 1 and type(items[0]) is str:
            return int(items[0], 16)
        if tag == "x" and len(items) == 1 and items[0] in _SPECIAL_FLOATS:
            return _SPECIAL_FLOATS[items[0]]
        if tag == "c" and len(items) == 2:
            re, im = (decode(x, depth + 1) for x in items)
            if type(re) is float and type(im) is float:
                return complex(re, im)
        if tag == "b" and len(items) == 1 and type(items[0]) is str:
            return bytes.fromhex(items[0])
        if tag == "d":
            pairs = []
            for pair in items:
                if type(pair) is not list or len(pair) != 2:
                    raise ChannelError("a dict entry that is not a pair")
                pairs.append((decode(pair[0], depth + 1), decode(pair[1], depth + 1)))
            _distinct_hashes([k for k, _ in pairs])
            return dict(pairs)
        values = [decode(x, depth + 1) for x in items]
        if tag == "l":
            return values
        if tag == "t":
            return tuple(values)
        if tag in ("s", "f"):
            _distinct_hashes(values)
            return set(values) if tag == "s" else frozenset(values)
    except (TypeError, ValueError) as e:  # unhashable keys, bad hex
        raise ChannelError(f"a value that is not plain data: {e}") from None
    raise ChannelError(f"an unknown value tag {tag[:20]!r}")


def layers_dict(layers: list[Layer]) -> dict[str, dict[str, Any]]:
    return {layer.name: asdict(layer) for layer in layers}
