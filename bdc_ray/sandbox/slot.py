"""A slot: PID 1 of a PID namespace of its own, in a mount namespace of its own with a private,
capped /tmp and its own /proc, under the seccomp filter. It forks the slot's runs one at a
time and, when a run's first process ends (or the supervisor asks it to kill the run), kills
every process left in the namespace (kill(-1) from a namespace's PID 1 reaches all of them and
no fork can slip past it), reaps them all, empties /tmp, and only then reports the run's end:
nothing of a run survives its check, and the next run of the slot starts in an empty folder.

Runs cannot reach the slot's process: signals from inside a PID namespace to its PID 1 are
dropped unless it handles them (it handles only SIGCHLD, to wake up), it is not dumpable (no
/proc/1/mem), ptrace is denied by the filter, and runs hold no capability.
"""

from __future__ import annotations

import os
import select
import signal
import socket
from typing import Any

from . import candidate
from .layers import _sys, fsview
from .protocol import Exit, recv_msg, send_msg


def _reap_all() -> None:
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return
        except InterruptedError:
            continue


def _end_run() -> None:
    """Every process left in the namespace killed and reaped (the slot itself excepted)."""
    try:
        os.kill(-1, signal.SIGKILL)
    except ProcessLookupError:
        pass  # nothing left
    _reap_all()


def serve(sock: socket.socket, slot: int, want: dict, filt: Any) -> None:
    """In the slot's process, after clone. Never returns."""
    uid = want["uid_base"] + slot if want["uid_base"] is not None else None
    try:
        os.setsid()  # a process group of its own: no run's kill(0) reaches the template
        fsview.enter_slot(want["run_dir_mb"], want["run_dir_inodes"], uid)
        _sys.prctl(_sys.PR_SET_DUMPABLE, 0)
        if filt is not None:
            filt[0].install()  # the slot's process and every run it forks
    except OSError as e:
        send_msg(sock, {"error": f"slot {slot} could not be set up: {e}"})
        os._exit(Exit.SETUP_FAILED)
    rfd, wfd = os.pipe()
    os.set_blocking(wfd, False)
    signal.set_wakeup_fd(wfd)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    run_filter = None if filt is None else filt[1]

    def new_spare() -> tuple[int, socket.socket]:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        _sys.set_name(candidate.SPARE_NAME)  # the spare's name from its first instant on
        pid = _sys.fork()  # fork(2) itself: the slot has no other thread (see _sys.fork)
        if pid == 0:
            signal.set_wakeup_fd(-1)
            for fd in (rfd, wfd, sock.fileno(), ours.fileno()):
                os.close(fd)
            candidate.spare(theirs, uid, run_filter)
        _sys.set_name(candidate.RUN_NAME)
        theirs.close()
        return pid, ours

    send_msg(sock, {"ready": slot})
    current: tuple[int, str] | None = None  # (pid, run id)
    spare = new_spare()  # the next run, forked while the slot waits
    while True:
        readable, _, _ = select.select([sock, rfd], [], [])
        if rfd in readable:
            os.read(rfd, 4096)
        if current is not None:
            try:
                pid, status = os.waitpid(current[0], os.WNOHANG)
            except ChildProcessError:
                pid, status = current[0], Exit.SETUP_FAILED << 8
            if pid:
                _end_run()
                try:
                    fsview.wipe(uid)
                except Exception as e:  # noqa: BLE001 - never start a run in a folder not empty
                    send_msg(sock, {"id": current[1], "status": status, "error": f"wipe: {e}"})
                    os._exit(Exit.SETUP_FAILED)
                send_msg(sock, {"id": current[1], "status": status})
                current = None
                spare = new_spare()  # after the report: the verdict does not wait for it
        if sock not in readable:
            continue
        try:
            msg, fds = recv_msg(sock)
        except (EOFError, ConnectionError):
            os._exit(0)  # the supervisor is gone: so is the slot, and with it its runs
        if msg["op"] == "run" and current is None:
            if spare is None:
                spare = new_spare()
            pid, handoff = spare
            spare = None
            try:
                send_msg(handoff, msg, fds)  # a spare that died reports as a run that did
            except OSError:
                pass
            handoff.close()
            for fd in fds:
                os.close(fd)
            current = (pid, msg["id"])
        elif msg["op"] == "kill" and current is not None and msg.get("id") == current[1]:
            try:
                os.kill(-1, signal.SIGKILL)  # reaped, wiped and reported above
            except ProcessLookupError:
                pass
