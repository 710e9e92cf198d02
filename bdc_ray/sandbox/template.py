"""The warm template: a small, single-threaded Python process that clones one run per program.

Started by the supervisor with a scrubbed environment. At start it applies the start-time
layers in order (user namespace when not root, network namespace, a private mount namespace,
a PID namespace of which it is PID 1, the read-only minimal root) and imports what programs
commonly use, so a run costs a clone, not an interpreter start. It never holds a test: the
checker (supervisor side) does, so no run's memory holds an expected value.

Control protocol: see protocol.py (RunRequest, kill, Ready, RunEnded).
"""

from __future__ import annotations

import gc
import json
import os
import select
import signal
import socket
import sys

from . import candidate, slot
from .layers import _sys, fsview, netns, pidns, seccomp, userns
from .protocol import LAYERS, Layer, layers_dict, send_msg

TEMPLATE_NAME = b"bdc-sandbox"
RUN_NAME = b"bdc-sandbox-run"
# what programs commonly import: paid for once here, not in every run (and importable after
# the pivot only from the standard library, which the minimal root keeps)
PRELOAD = (
    "math", "re", "collections", "itertools", "functools", "heapq", "bisect", "string",
    "typing", "random", "statistics", "fractions", "decimal", "json", "copy", "operator",
    "datetime", "hashlib", "array", "dataclasses", "enum", "io", "textwrap", "unicodedata",
    "cmath", "traceback", "resource",
)  # fmt: skip


def _start_layers(want: dict) -> tuple[list[Layer], tuple[seccomp.Filter, seccomp.Filter] | None]:
    """The start-time layers, in LAYERS order; returns in the PID namespace's PID 1."""
    optional = set(want.get("allow_missing", ()))
    req = {name: name not in optional for name in LAYERS}
    layers = [userns.enter(req["user_namespace"]), netns.enter(req["net_namespace"])]
    failed_mounts = fsview.private(req["filesystem_view"])
    layers.append(pidns.enter(req["pid_namespace"]))
    for name in want.get("packages", ()):
        try:
            __import__(name)  # what the view exposes, importable also where it is not preloaded
        except ImportError:
            pass  # the filesystem view reports it, naming the package
    for name in PRELOAD:
        try:
            __import__(name)
        except ImportError:
            pass
    filt, sc = seccomp.build(req["seccomp"])  # before the pivot: libseccomp lives outside it
    layers.append(
        failed_mounts
        or fsview.build_root(want["root"], tuple(want.get("packages", ())), req["filesystem_view"])
    )
    root = os.geteuid() == 0 and layers[0].detail.startswith("not needed")
    layers.append(Layer("rlimits", True, req["rlimits"], "cpu, address space, file size, files"
                        + (", processes" if root else "")))  # fmt: skip
    layers.append(
        Layer("credentials", True, req["credentials"],
              "a uid per slot (62000+slot), no groups" if root else "no capabilities")
    )  # fmt: skip
    layers.append(sc)
    hook = want.get("audit_hook", True)
    layers.append(Layer("audit_hook", hook, req["audit_hook"] and hook, "defence in depth only"))
    return layers, filt


def serve(
    sock: socket.socket,
    want: dict,
    layers: list[Layer],
    filt: tuple[seccomp.Filter, seccomp.Filter] | None,
) -> None:
    candidate.warm_up()
    gc.collect()
    gc.freeze()  # a pre-fork server: runs do not copy pages by touching the shared heap
    _sys.malloc_trim()  # give back what importing and warming freed: every fork maps less
    _sys.prctl(_sys.PR_SET_NO_NEW_PRIVS, 1)  # for every slot and run: nothing gains privileges
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    _sys.set_name(TEMPLATE_NAME)
    rfd, wfd = os.pipe()
    os.set_blocking(wfd, False)
    signal.set_wakeup_fd(wfd)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    ours = []
    for i in range(int(want["slots"])):
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        _sys.set_name(RUN_NAME)  # the slot's runs inherit it: what ps and top show
        pid = _sys.clone(pidns.SLOT_FLAGS | fsview.SLOT_FLAGS | netns.SLOT_FLAGS)
        if pid == 0:
            signal.set_wakeup_fd(-1)
            for fd in (rfd, wfd, sock.fileno(), a.fileno(), *(s.fileno() for s in ours)):
                os.close(fd)
            slot.serve(b, i, want, filt)
        b.close()
        ours.append(a)
    _sys.set_name(TEMPLATE_NAME)
    send_msg(sock, {"ready": True, "pid": os.getpid(), "layers": layers_dict(layers)},
             [s.fileno() for s in ours])  # fmt: skip
    for s in ours:
        s.close()
    while True:  # a slot that dies ends the template: the supervisor starts a new one
        readable, _, _ = select.select([sock, rfd], [], [])
        if sock in readable and not sock.recv(1):
            return
        if rfd in readable:
            os.read(rfd, 4096)
            try:
                if os.waitpid(-1, os.WNOHANG)[0]:
                    return
            except ChildProcessError:
                return


def main() -> None:
    fd = int(sys.argv[1])
    want = json.loads(sys.argv[2])
    os.set_inheritable(fd, False)
    sock = socket.socket(fileno=fd)
    try:
        layers, filt = _start_layers(want)
    except Exception as e:  # noqa: BLE001 - told to the supervisor, which raises it
        send_msg(sock, {"ready": False, "error": f"{type(e).__name__}: {e}"})
        raise SystemExit(1) from None
    serve(sock, want, layers, filt)


if __name__ == "__main__":
    main()
