"""Length-prefixed JSON messages on a Unix socket, optionally carrying file descriptors."""

from __future__ import annotations

import json
import socket
import struct


def send_msg(sock: socket.socket, obj: dict, fds: list[int] | None = None) -> None:
    data = json.dumps(obj).encode()
    header = struct.pack("!I", len(data))
    if fds:
        socket.send_fds(sock, [header], fds)
    else:
        sock.sendall(header)
    sock.sendall(data)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def recv_msg(sock: socket.socket) -> tuple[dict, list[int]]:
    header, fds, _, _ = socket.recv_fds(sock, 4, 4)
    if not header:
        raise EOFError
    header += _recv_exact(sock, 4 - len(header)) if len(header) < 4 else b""
    (n,) = struct.unpack("!I", header)
    return json.loads(_recv_exact(sock, n)), list(fds)
