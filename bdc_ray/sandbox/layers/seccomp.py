"""A system-call filter for what no test program needs, built once in the template with
libseccomp (the `pyseccomp` binding) and exported as BPF; every run installs that program with
one prctl before any program code runs (runs cannot remove it; a filter they add can only deny
more). Denied calls fail with EPERM (socket families other than AF_UNIX with EAFNOSUPPORT,
clone3 with ENOSYS so that libc falls back to clone, whose namespace flags are denied):
a program that tries one gets an error, not a crash. Calls of other ABIs (x32, i386) are
killed by libseccomp's architecture check."""

from __future__ import annotations

import ctypes
import errno
import os
import socket

from ..protocol import Layer
from . import _sys

# what a test program never needs: changing the filesystem view or the namespaces, reaching
# other processes' memory, the kernel's keyrings, BPF and perf, modules, clocks, devices,
# handles that bypass paths, io_uring (whose operations no filter sees), network endpoints
DENY = (
    "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen",
    "fsconfig", "fsmount", "fspick", "mount_setattr", "unshare", "setns",
    "ptrace", "process_vm_readv", "process_vm_writev", "process_madvise", "kcmp",
    "pidfd_getfd", "keyctl", "add_key", "request_key", "bpf", "perf_event_open",
    "userfaultfd", "init_module", "finit_module", "delete_module", "kexec_load",
    "kexec_file_load", "reboot", "swapon", "swapoff", "syslog", "acct", "settimeofday",
    "clock_settime", "clock_adjtime", "adjtimex", "sethostname", "setdomainname", "iopl",
    "ioperm", "mknod", "mknodat", "open_by_handle_at", "name_to_handle_at", "fanotify_init",
    "quotactl", "lookup_dcookie", "uselib", "vhangup", "io_uring_setup", "io_uring_enter",
    "io_uring_register", "bind", "listen", "connect", "accept", "accept4", "vmsplice",
    # System V IPC and POSIX message queues: objects that would outlive the run, hold memory
    # outside its limits and carry state to the next run (POSIX shm is files in its /tmp)
    "shmget", "shmat", "shmdt", "shmctl", "semget", "semop", "semtimedop", "semctl",
    "msgget", "msgsnd", "msgrcv", "msgctl", "mq_open", "mq_unlink", "mq_timedsend",
    "mq_timedreceive", "mq_notify", "mq_getsetattr",
    "ioprio_set", "migrate_pages", "move_pages",
)  # fmt: skip
# calls that act on another process given its pid: allowed on the caller itself only (pid 0).
# In a user namespace a run shares its uid with its slot's PID 1, which the kernel would let
# it prlimit, renice or pin otherwise.
_SELF_ONLY = ("prlimit64", "sched_setaffinity", "sched_setparam", "sched_setscheduler",
              "sched_setattr")  # fmt: skip
_NS_FLAGS = (0x80, 0x20000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000,
             0x40000000)  # fmt: skip
_TIOCSTI, _TIOCLINUX = 0x5412, 0x541C
_CLONE_THREAD = 0x00010000


class Filter:
    """The exported BPF program, held for the template's lifetime (runs inherit it)."""

    def __init__(self, bpf: bytes) -> None:
        self._buf = ctypes.create_string_buffer(bpf, len(bpf))
        self._prog = _SockFprog(len(bpf) // 8, ctypes.addressof(self._buf))

    def install(self) -> None:
        _sys.prctl(_sys.PR_SET_SECCOMP, _sys.SECCOMP_MODE_FILTER, ctypes.byref(self._prog))


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def build(required: bool) -> tuple[tuple[Filter, Filter] | None, Layer]:
    """(the slot's filter, the one each run adds), and the layer's report."""
    try:
        import pyseccomp as sc
    except (ImportError, OSError, RuntimeError) as e:  # no package, or no libseccomp.so.2
        return None, Layer("seccomp", False, required, f"libseccomp unavailable: {e}")
    try:
        f = sc.SyscallFilter(sc.ALLOW)
        denied = []
        for name in DENY:
            try:
                f.add_rule(sc.ERRNO(errno.EPERM), name)
                denied.append(name)
            except (OSError, ValueError, RuntimeError):
                pass  # not a call of this architecture
        for flag in _NS_FLAGS:
            f.add_rule(sc.ERRNO(errno.EPERM), "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
        f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
        for name in _SELF_ONLY:
            f.add_rule(sc.ERRNO(errno.EPERM), name, sc.Arg(0, sc.NE, 0))
        f.add_rule(sc.ERRNO(errno.EPERM), "setpriority", sc.Arg(0, sc.NE, 0))  # PRIO_PROCESS
        f.add_rule(sc.ERRNO(errno.EPERM), "setpriority", sc.Arg(1, sc.NE, 0))  # itself
        f.add_rule(sc.ERRNO(errno.EPERM), "sendto", sc.Arg(4, sc.NE, 0))  # to an address
        f.add_rule(sc.ERRNO(errno.EAFNOSUPPORT), "socket", sc.Arg(0, sc.NE, socket.AF_UNIX))
        for request in (_TIOCSTI, _TIOCLINUX):
            f.add_rule(sc.ERRNO(errno.EPERM), "ioctl", sc.Arg(1, sc.EQ, request))
        # a second, small filter each run adds: no new processes (threads only), so a run is one
        # process: its address-space limit is the run's, and nothing can fork past its end
        run = sc.SyscallFilter(sc.ALLOW)
        run.add_rule(sc.ERRNO(errno.EPERM), "fork")
        run.add_rule(sc.ERRNO(errno.EPERM), "vfork")
        run.add_rule(sc.ERRNO(errno.EPERM), "clone", sc.Arg(0, sc.MASKED_EQ, _CLONE_THREAD, 0))
        # messages to an address (an abstract unix socket of another run) and descriptors
        # passed on: sends on the call socket use send(), without either (the slot passes a
        # run its descriptors with sendmsg, so only runs lose it)
        run.add_rule(sc.ERRNO(errno.EPERM), "sendmsg")
        run.add_rule(sc.ERRNO(errno.EPERM), "sendmmsg")
        filters = Filter(_export(f)), Filter(_export(run))
    except OSError as e:
        return None, Layer("seccomp", False, required, f"could not build the filter: {e}")
    detail = (
        f"{len(denied)} calls denied, namespace flags of clone, non-AF_UNIX sockets, sends to an "
        "address, calls on other processes; in runs: process creation, sendmsg"
    )
    return filters, Layer("seccomp", True, required, detail)


def _export(f: object) -> bytes:
    fd = os.memfd_create("bdc-seccomp")
    try:
        with os.fdopen(os.dup(fd), "wb") as out:
            f.export_bpf(out)  # type: ignore[attr-defined]
        return os.pread(fd, os.fstat(fd).st_size, 0)
    finally:
        os.close(fd)
