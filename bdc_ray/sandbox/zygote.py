"""The warm template: a small, single-threaded Python process that forks one child per run.

Started by the supervisor with a scrubbed environment. At start it moves itself into fresh
network and PID namespaces where the host allows (then it is PID 1 there: when it dies, the
kernel kills every process a program left behind) and imports the modules programs commonly
use, so a run costs a fork, not an interpreter start.

Protocol on the control socket (length-prefixed JSON; a run also carries the verdict pipe's
write end as SCM_RIGHTS):
  supervisor -> {"op": "run", "id", ...request}   {"op": "kill", "id"}
  (a function run names its problem's tests by "sources", a key; its first run with a key
  also carries them, "define", compiled here once; "forget" drops keys the supervisor evicted)
  zygote     -> {"ready": ..., "isolation": {...}} once, then {"id", "status"} per finished run
After a run ends, every process of its uid is killed (a forked sweeper drops to that uid and
sends SIGKILL to all it may signal), so a program's background children do not outlive it.
"""

from __future__ import annotations

import _signal
import _thread
import ctypes
import json
import os
import select
import signal
import socket
import sys

from .protocol import recv_msg, send_msg

CLONE_NEWNS = 0x00020000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
PR_SET_NO_NEW_PRIVS = 38
# the handlers the template itself has that a run must not (SIGINT and SIGTERM are the
# default already: serve() sets SIGINT so)
_RESET_SIGNALS = tuple(int(s) for s in (signal.SIGCHLD, signal.SIGPIPE))
_SIGXFSZ = int(signal.SIGXFSZ)
TEMPLATE_NAME = b"bdc-sandbox"
RUN_NAME = b"bdc-sandbox-run"

# what programs commonly import: paid for once here, not in every run
PRELOAD = [
    "math",
    "re",
    "collections",
    "itertools",
    "functools",
    "heapq",
    "bisect",
    "string",
    "typing",
    "random",
    "statistics",
    "fractions",
    "decimal",
    "json",
    "copy",
    "operator",
    "datetime",
    "hashlib",
    "array",
    "dataclasses",
    "enum",
    "io",
    "textwrap",
    "unicodedata",
    "cmath",
    "traceback",
    "resource",
]

_libc = ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, arg: int) -> bool:
    return _libc.prctl(option, arg, 0, 0, 0) == 0


def _prctl_name(name: bytes) -> None:
    _libc.prctl(PR_SET_NAME, name, 0, 0, 0)


def _fork() -> int:
    """fork(2) itself, without os.fork's interpreter bookkeeping in the child (re-creating the
    GIL and the import lock, dropping other threads' states, the at-fork callbacks): a
    measurable cost per run, and needed only where other threads could hold those locks. The template never
    starts a thread; should one ever run, os.fork it is. Of the at-fork callbacks only
    random's reseeding matters here: _child reseeds."""
    if _thread._count():
        return os.fork()
    pid = _libc.fork()
    if pid < 0:
        raise OSError(ctypes.get_errno(), "fork failed")
    return pid


def _unshare(flags: int) -> bool:
    return _libc.unshare(flags) == 0


MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND = 1, 2, 4, 8, 32, 4096
MS_REC, MS_PRIVATE, MNT_DETACH = 1 << 14, 1 << 18, 2


def _blocked_ancestor(path: str) -> str | None:
    """The topmost folder above `path` that users other than its owner cannot enter (no
    `x` for others): a run, under a uid of its own, cannot reach `path` through it."""
    parts = os.path.abspath(path).split(os.sep)[1:-1]
    for i in range(1, len(parts) + 1):
        folder = os.sep + os.sep.join(parts[:i])
        try:
            if not os.stat(folder).st_mode & 0o001:
                return folder
        except OSError:
            return None
    return None


def expose_interpreter(paths: list[str]) -> list[str] | None:
    """Let runs (dropped to a uid of their own) import the interpreter's own modules where
    they lie under a folder closed to other users, e.g. a pyenv Python under /root (0700):
    without this, every module not preloaded by the template fails to import. In the
    template's mount namespace (see cap_run_dirs), each such folder is covered by a small
    read-only tmpfs that others may enter, holding only the needed trees, bind-mounted at
    their own paths: what else that folder holds stays hidden from runs. Returns the trees
    exposed ([] when none needed it), or None where this could not be done."""
    blocked: dict[str, list[str]] = {}
    for path in sorted({os.path.realpath(p) for p in paths if os.path.isdir(p)}):
        top = _blocked_ancestor(path)
        if top is not None and not any(path.startswith(q + os.sep) for q in blocked.get(top, ())):
            blocked.setdefault(top, []).append(path)
    exposed: list[str] = []
    for top, trees in blocked.items():
        # handles on the real trees, taken before the tmpfs hides them
        fds = [os.open(t, os.O_PATH | os.O_DIRECTORY) for t in trees]
        mounted: list[str] = []
        try:
            if _libc.mount(
                b"tmpfs", top.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, b"size=1m,mode=0755"
            ):
                return None
            mounted.append(top)
            for tree, fd in zip(trees, fds, strict=True):
                os.makedirs(tree, mode=0o755, exist_ok=True)
                if _libc.mount(
                    f"/proc/self/fd/{fd}".encode(), tree.encode(), None, MS_BIND | MS_REC, None
                ):
                    raise OSError(ctypes.get_errno(), f"bind-mounting {tree}")
                mounted.append(tree)
            _libc.mount(
                None, top.encode(), None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, None
            )
            exposed += trees
            mounted.clear()
        except OSError:
            return None  # what was mounted goes (below): the folder is as it was
        finally:
            for path in reversed(mounted):
                _libc.umount2(path.encode(), MNT_DETACH)
            for fd in fds:
                os.close(fd)
    return exposed


def cap_run_dirs(dirs: list[str], size_mb: int) -> int | None:
    """Mount a tmpfs of `size_mb` (4096 inodes, nosuid/nodev/noexec) on each slot's folder,
    in a mount namespace of the template's own: every file a run writes stays under
    RLIMIT_FSIZE, so only such a cap stops one that writes file after file from filling the
    host's memory (/dev/shm) or disk, or a neighbour's room for output. The mounts die with
    the namespace, i.e. with the template: nothing is left on the host. Returns the cap in
    force, or None where the host refuses (no root, no mount namespaces)."""
    if not dirs or not _unshare(CLONE_NEWNS):
        return None
    # private: nothing mounted here propagates back to the host's namespace
    if _libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        return None
    opts = f"size={size_mb}m,nr_inodes=4096,mode=0711".encode()
    done = []
    for path in dirs:
        if _libc.mount(b"tmpfs", path.encode(), b"tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, opts):
            for p in done:
                _libc.umount2(p.encode(), MNT_DETACH)
            return None
        done.append(path)
    return size_mb


def _sweep(uid: int) -> None:
    """Kill every process running as `uid` (the run's own uid): escapes by setsid included."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            os.kill(-1, signal.SIGKILL)  # all this uid may signal, except the sweeper itself
        except OSError:
            pass
        os._exit(0)
    os.waitpid(pid, 0)


def _child(req: dict, vfd: int, live_w: int, prepared: tuple) -> None:
    """In the forked child: isolate, then hand over to the harness. Never returns.

    Every page this process writes that it shares with the template is copied first (page
    copies are most of a run's cost): what can be done once is done in the template (name,
    no-new-privs, stdio objects, the harness's import), the rest uses the cheapest call that
    does it (the control socket's descriptor goes with closerange, not socket.close)."""
    stdio, harness, run_function, run_stdio = prepared
    try:
        os.setsid()
        random = sys.modules.get("random")
        if random is not None:
            random.seed()  # what os.fork's at-fork callback would do: runs do not share a stream
        for s in _RESET_SIGNALS:
            _signal.signal(s, _signal.SIG_DFL)  # not signal.signal: it builds enums
        tmpdir = req["tmpdir"]
        os.chdir(tmpdir)
        uid = req["limits"].get("uid")
        null = os.open(os.devnull, os.O_RDONLY)
        stdin = os.open("stdin", os.O_RDONLY) if req["kind"] == "stdio" else null
        os.dup2(stdin, 0)
        harness.apply_limits(req["limits"])
        harness.drop_privileges(uid)
        # output files are created as the run's uid, inside its directory, capped by RLIMIT_FSIZE
        out = os.open("stdout", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        err = os.open("stderr", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(out, 1)
        os.dup2(err, 2)
        for fd in {null, stdin, out, err}:
            if fd > 2:
                os.close(fd)
        # nothing of the template or of other runs stays open: only stdio, the verdict pipe
        # and the liveness pipe
        keep = sorted({vfd, live_w})
        os.closerange(3, keep[0])
        os.closerange(keep[0] + 1, keep[1])
        os.closerange(keep[1] + 1, 1 << 16)
        _signal.signal(_SIGXFSZ, _signal.SIG_IGN)  # oversized output: an error, not a crash
        if req["kind"] == "function":
            run_function(req, vfd)
            # what the program printed reaches its files (os._exit below flushes nothing); our
            # own stream objects, whatever the program did to sys.stdout
            for stream in stdio[1:]:
                try:
                    stream.flush()
                except Exception:  # noqa: BLE001 - e.g. past RLIMIT_FSIZE: keep what was written
                    pass
        else:
            # the verdict pipe stays open (and unread) so that its EOF marks the end of the run
            run_stdio(req)
    except BaseException as e:  # noqa: BLE001
        try:
            os.write(2, f"sandbox setup failed: {type(e).__name__}: {e}\n".encode())
        except OSError:
            pass
        os._exit(70)
    os._exit(0)


def serve(sock: socket.socket, isolation: dict) -> None:
    for name in PRELOAD:
        try:
            __import__(name)
        except ImportError:
            pass
    import gc

    from bdc_ray.sandbox import child as harness  # the harness, ready before the first fork

    harness.scrub_environment()
    harness.presnapshot([n for n in PRELOAD if n in sys.modules])
    run_function, run_stdio = harness.seal()
    harness.warm_up(run_function)
    # a pre-fork server: keep the collector away from the shared heap, so forked children do
    # not copy every page by touching its objects
    gc.collect()
    gc.freeze()
    _libc.malloc_trim(0)  # give back what compiling and importing freed: every fork maps less
    # once for every run: no run gains privileges through exec (the template never execs), and
    # the text streams a run puts on its fds 0-2 (never written here, so their buffers are empty)
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    stdio = (
        open(0, closefd=False),  # noqa: SIM115
        open(1, "w", closefd=False),  # noqa: SIM115
        open(2, "w", closefd=False),  # noqa: SIM115
    )
    # a run's sys.std* are these from the start: the same descriptors, which a run points at
    # its own files (the template never writes to them)
    sys.stdin, sys.stdout, sys.stderr = stdio
    # a run inherits the default for both (the template is in a session of its own: no
    # terminal's Ctrl-C reaches it)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    # the harness bound to private globals; held only here (and so, in a run, only by frames,
    # which a program may not read)
    prepared = (stdio, harness, run_function, run_stdio)
    _prctl_name(TEMPLATE_NAME)

    rfd, wfd = os.pipe()
    os.set_blocking(wfd, False)
    signal.set_wakeup_fd(wfd)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    running: dict[int, dict] = {}  # pid -> {"id", "uid"}
    by_id: dict[str, int] = {}
    # the problems' compiled tests by the supervisor's key: it defines a key with its first
    # run and forgets keys it evicts from its own bounded table, so both always agree
    sources: dict[str, dict] = {}
    send_msg(sock, {"ready": True, "pid": os.getpid(), "isolation": isolation})
    while True:
        readable, _, _ = select.select([sock, rfd], [], [])
        if rfd in readable:
            os.read(rfd, 4096)
        # reap: our runs, and any orphan reparented to us (we are PID 1 of the namespace)
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            run = running.pop(pid, None)
            if run is not None:
                by_id.pop(run["id"], None)
                # every process of the run holds the liveness pipe: EOF there means none is
                # left; otherwise (a background child, or a descriptor closed on purpose) sweep
                live_r = run["live"]
                all_gone = bool(select.select([live_r], [], [], 0)[0]) and not os.read(live_r, 1)
                os.close(live_r)
                if run["uid"] is not None and not all_gone:
                    _sweep(run["uid"])
                send_msg(sock, {"id": run["id"], "status": status})
        if sock in readable:
            try:
                msg, fds = recv_msg(sock)
            except (EOFError, ConnectionError):
                return  # the supervisor is gone: so are we, and with us the namespace
            if msg["op"] == "run":
                if msg["kind"] == "function":
                    for key in msg.pop("forget", ()):
                        sources.pop(key, None)
                    if "define" in msg:
                        sources[msg["sources"]] = harness.prepare_sources(msg.pop("define"))
                    msg["src"] = sources.get(msg["sources"])
                live_r, live_w = os.pipe()
                _prctl_name(RUN_NAME)  # the run inherits it: what ps and top show
                pid = _fork()
                if pid == 0:
                    signal.set_wakeup_fd(-1)
                    for fd in (rfd, wfd, live_r):
                        os.close(fd)
                    _child(msg, fds[0], live_w, prepared)
                _prctl_name(TEMPLATE_NAME)
                os.close(live_w)
                for fd in fds:
                    os.close(fd)
                running[pid] = {"id": msg["id"], "uid": msg["limits"].get("uid"), "live": live_r}
                by_id[msg["id"]] = pid
            elif msg["op"] == "kill":
                pid = by_id.get(msg["id"])
                if pid is not None:
                    try:
                        os.killpg(pid, signal.SIGKILL)
                    except OSError:
                        try:
                            os.kill(pid, signal.SIGKILL)
                        except OSError:
                            pass
                    uid = running.get(pid, {}).get("uid")
                    if uid is not None:
                        _sweep(uid)


def main() -> None:
    fd = int(sys.argv[1])
    want = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    sock = socket.socket(fileno=fd)
    isolation = {"net_namespace": False, "pid_namespace": False, "root": os.geteuid() == 0}
    isolation["run_dir_cap_mb"] = cap_run_dirs(want.get("run_dirs", []), want.get("run_dir_mb", 64))
    if want.get("drop_privileges"):
        # runs import as their own uid: the interpreter's library and the environment's
        # site-packages must be reachable (not this project's own folder, which runs need not
        # read)
        trees = [sys.base_prefix, sys.prefix]
        closed = [t for t in trees if os.path.isdir(t) and _blocked_ancestor(t)]
        isolation["interpreter_exposed"] = (
            expose_interpreter(trees) if closed and isolation["run_dir_cap_mb"] else []
        )
        if closed and not isolation["interpreter_exposed"]:
            isolation["interpreter_exposed"] = None  # runs can import only what is preloaded
    if want.get("namespaces", True):
        isolation["net_namespace"] = _unshare(CLONE_NEWNET)
        isolation["pid_namespace"] = _unshare(CLONE_NEWPID)
    if isolation["pid_namespace"]:
        # the first child of a new PID namespace is its PID 1; this process only waits for it
        pid = os.fork()
        if pid:
            sock.close()
            signal.signal(signal.SIGTERM, lambda *_: os.kill(pid, signal.SIGKILL))
            _, status = os.waitpid(pid, 0)
            os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # the waiter dies: the namespace dies
    serve(sock, isolation)


if __name__ == "__main__":
    main()
