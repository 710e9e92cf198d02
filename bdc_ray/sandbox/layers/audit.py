"""An audit hook (PEP 578) in the run's interpreter: defence in depth only. It refuses what a
test program has no business doing (ctypes, process creation, signals, sockets, writing
outside /tmp) so that most misbehaving programs fail early with a clear PermissionError; but it
lives in the program's own process, which can get around it (its own memory is its own), so no
verdict and no boundary depends on it: the kernel layers stop the same things without it."""

from __future__ import annotations

import os
import sys
from typing import Any

_BLOCKED_PREFIXES = ("ctypes.", "socket.", "subprocess.", "os.exec", "os.posix_spawn", "os.spawn")
_BLOCKED = frozenset(
    {"os.fork", "os.forkpty", "os.system", "os.kill", "os.killpg", "pty.spawn", "sys.addaudithook"}
)
_BLOCKED_MODULES = frozenset({"ctypes", "_ctypes", "cffi", "_posixsubprocess", "multiprocessing"})
_PATH_EVENTS = frozenset(
    {"os.remove", "os.rename", "os.mkdir", "os.rmdir", "os.chmod", "os.chown", "os.symlink",
     "os.link", "os.truncate", "os.utime", "shutil.rmtree", "shutil.move"}
)  # fmt: skip
_WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT
_fsdecode, _abspath = os.fsdecode, os.path.abspath


def _inside(path: Any) -> bool:
    if isinstance(path, int):
        return True
    try:
        p = _abspath(_fsdecode(path))
    except TypeError:
        return False
    return p == "/tmp" or p.startswith("/tmp/")


def _hook(event: str, args: tuple) -> None:
    if event in _BLOCKED or event.startswith(_BLOCKED_PREFIXES):
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event == "import" and args[0].split(".")[0] in _BLOCKED_MODULES:
        raise PermissionError(f"sandbox: importing {args[0]} is not allowed")
    if event == "open":
        mode, flags = args[1], args[2]
        writing = (mode and any(c in str(mode) for c in "wax+")) or (
            isinstance(flags, int) and flags & _WRITE
        )
        if writing and not _inside(args[0]):
            raise PermissionError("sandbox: writing outside /tmp is not allowed")
    elif event in _PATH_EVENTS:
        for a in args[:2]:
            if isinstance(a, str | bytes | os.PathLike) and not _inside(a):
                raise PermissionError(f"sandbox: {event} outside /tmp is not allowed")


def install() -> None:
    sys.addaudithook(_hook)
