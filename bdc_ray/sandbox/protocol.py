"""Length-prefixed messages on a Unix socket between the supervisor and its template,
optionally carrying file descriptors.

Both ends are trusted code of this package running the same interpreter (the template is
started with the supervisor's `sys.executable`; programs never hold the socket), so bodies are
`marshal`ed: a dict of strings, numbers, lists and None encodes and decodes in C, several times
faster than JSON, and a message goes out in one `sendmsg` (header, body and descriptors)."""

from __future__ import annotations

import array
import marshal
import socket
import struct

_HEADER = struct.Struct("!I")
_FD_SPACE = socket.CMSG_SPACE(4 * array.array("i").itemsize)  # room for up to four descriptors


def send_msg(sock: socket.socket, obj: dict, fds: list[int] | None = None) -> None:
    data = marshal.dumps(obj)
    payload = _HEADER.pack(len(data)) + data
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
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
