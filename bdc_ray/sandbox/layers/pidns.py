"""PID namespaces. The template is PID 1 of one of its own (when it or its supervisor dies,
the kernel kills everything in it), and every run is cloned as PID 1 of a new one nested in
it: when a run's first process exits or is killed, the kernel kills every process the program
started, before the template can reap the run, so nothing outlives its check, and a run sees,
signals and traces no process but its own (the checker and the template are outside)."""

from __future__ import annotations

import os
import signal

from ..protocol import Layer
from . import _sys

SLOT_FLAGS = _sys.CLONE_NEWPID | _sys.CLONE_NEWIPC


def enter(required: bool) -> Layer:
    """Move the template into a new PID namespace: the first child is its PID 1 and carries
    on; this process only waits for it, and returns only in that child."""
    try:
        _sys.unshare(_sys.CLONE_NEWPID)
    except OSError as e:
        return Layer("pid_namespace", False, required, e.strerror or str(e))
    pid = os.fork()
    if pid:
        os.closerange(3, 1 << 16)  # the control socket is the template's alone
        signal.signal(signal.SIGTERM, lambda *_: os.kill(pid, signal.SIGKILL))
        _, status = os.waitpid(pid, 0)
        os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
    _sys.prctl(_sys.PR_SET_PDEATHSIG, signal.SIGKILL)  # the waiter dies: the namespace dies
    return Layer("pid_namespace", True, required, "template is PID 1; one namespace per run")
