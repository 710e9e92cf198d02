"""The few Linux calls the layers need that the os module lacks (mount, pivot_root, clone
with namespace flags, capset, prctl), through libc, raising OSError with errno on failure."""

from __future__ import annotations

import ctypes
import os

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
SIGCHLD = 17

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND = 32, 1024, 2048, 4096
MS_REC, MS_PRIVATE, MS_RELATIME = 1 << 14, 1 << 18, 1 << 21
MNT_DETACH = 2

PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_NAME = 1, 4, 15
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP = 38, 22
SECCOMP_MODE_FILTER = 2

_SYS_CLONE, _SYS_PIVOT_ROOT, _SYS_CAPSET = 56, 155, 126  # x86_64
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
_libc.syscall.restype = ctypes.c_long


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def mount(
    source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None
) -> None:
    enc = [None if x is None else x.encode() for x in (source, target, fstype, data)]
    _check(_libc.mount(enc[0], enc[1], enc[2], flags, enc[3]), f"mount {target}")


def umount(target: str) -> None:
    _check(_libc.umount2(target.encode(), MNT_DETACH), f"umount {target}")


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), f"unshare {flags:#x}")


def pivot_root(new_root: str, put_old: str) -> None:
    _check(_libc.syscall(_SYS_PIVOT_ROOT, new_root.encode(), put_old.encode()), "pivot_root")


def clone(flags: int) -> int:
    """fork(2) with namespace flags: the child starts in fresh namespaces of those kinds (a
    new PID namespace makes it PID 1 there). Like libc's fork without its at-fork handlers:
    only safe in a process without other threads, which the template is."""
    return _check(_libc.syscall(_SYS_CLONE, flags | SIGCHLD, 0, 0, 0, 0), "clone")


def fork() -> int:
    """fork(2) without os.fork's interpreter bookkeeping in the child (re-creating the GIL and
    the import lock, the at-fork callbacks): a measurable share of a run's cost, and needed
    only where another thread could hold those locks; slots and the template have none. Of
    the callbacks only random's reseeding matters: runs reseed themselves."""
    return _check(_libc.fork(), "fork")


def prctl(option: int, arg: int = 0, arg3: object = 0) -> None:
    _check(_libc.prctl(option, arg, arg3, 0, 0), f"prctl {option}")


def set_name(name: bytes) -> None:
    _libc.prctl(PR_SET_NAME, name, 0, 0, 0)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint32) for n in ("effective", "permitted", "inheritable")]


def drop_capabilities() -> None:
    """Empty effective, permitted and inheritable sets (version 3: both 32-bit halves)."""
    header = _CapHeader(0x20080522, 0)
    data = (_CapData * 2)()
    _check(_libc.syscall(_SYS_CAPSET, ctypes.byref(header), ctypes.byref(data)), "capset")


def malloc_trim() -> None:
    _libc.malloc_trim(0)
