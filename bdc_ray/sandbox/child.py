"""What runs inside a sandboxed process, after the template forked it.

Order matters: limits and identity are set before any untrusted byte runs; from then on an
audit hook (PEP 578; it cannot be removed) refuses frame and object-graph introspection,
ctypes, process creation, signals to other processes, sockets and writes outside the run's
directory. The verdict of each function test goes out on a pipe, tagged with a per-test nonce
that the supervisor chose; the program never holds a reference to the nonces (they live in
this module's local variables, reachable only through frames, which the hook refuses), so
printing, exiting early, or writing to the pipe cannot forge a pass.
"""

from __future__ import annotations

import _signal
import _thread
import builtins
import itertools
import operator
import os
import resource
import signal
import sys
from typing import Any

# exact types a candidate may return: containers of these are walked, anything else (a class
# whose __eq__ always answers True, a subclass of int...) is refused before a test compares it
_PLAIN = (int, float, str, bool, type(None), complex, bytes)
_CONTAINERS = (list, tuple, set, frozenset, dict)
_BLOCKED_PREFIXES = (
    "ctypes.",
    "socket.",
    "gc.get_",
    "subprocess.",
    "os.exec",
    "os.posix_spawn",
    "os.spawn",
    "winreg.",
    "_winapi.",
)
_BLOCKED = {
    "sys._getframe",
    "sys._current_frames",
    "sys._current_exceptions",
    "sys.settrace",
    "sys.setprofile",
    "sys.addaudithook",
    "os.fork",
    "os.forkpty",
    "os.system",
    "os.kill",
    "os.killpg",
    "os.startfile",
    "pty.spawn",
    "object.__getattr__",
    "code.__new__",
    "function.__new__",
    "cpython.PyInterpreterState_New",
    "cpython.run_file",
}
_PATH_EVENTS = {
    "os.remove",
    "os.rename",
    "os.mkdir",
    "os.rmdir",
    "os.chmod",
    "os.chown",
    "os.symlink",
    "os.link",
    "os.truncate",
    "os.utime",
    "shutil.rmtree",
    "shutil.move",
    "os.chdir",
    "os.chroot",
}
_BLOCKED_MODULES = {"ctypes", "_ctypes", "cffi", "_posixsubprocess", "multiprocessing"}


class _TestTimeout(BaseException):
    """Raised by the per-test alarm; a BaseException so `except Exception` does not eat it."""


class UntrustedReturn(Exception):
    pass


def apply_limits(limits: dict[str, Any]) -> None:
    def cap(res: int, value: int, hard: int | None = None) -> None:
        try:
            resource.setrlimit(res, (value, value if hard is None else hard))
        except (ValueError, OSError):
            pass

    # soft below hard: the kernel sends SIGXCPU (reported as a timeout) before SIGKILL; with
    # both equal SIGKILL comes first and a CPU-bound run could read as "killed"
    cap(resource.RLIMIT_CPU, int(limits["cpu_s"]), int(limits["cpu_s"]) + 1)
    cap(resource.RLIMIT_AS, int(limits["memory_mb"]) << 20)
    cap(resource.RLIMIT_FSIZE, int(limits["file_mb"]) << 20)
    cap(resource.RLIMIT_NOFILE, int(limits["open_files"]))
    cap(resource.RLIMIT_CORE, 0)
    if limits.get("uid") is not None:
        cap(resource.RLIMIT_NPROC, int(limits["processes"]))


def drop_privileges(uid: int | None) -> None:
    if uid is None or os.geteuid() != 0:
        return
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)


def scrub_environment(tmpdir: str) -> None:
    keep = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": tmpdir,
        "TMPDIR": tmpdir,
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
    }
    os.environ.clear()
    os.environ.update(keep)


def point_home(tmpdir: str) -> None:
    """In a run, after the template's scrub_environment: HOME and TMPDIR are its directory
    (the only variables that differ between runs; set alone, they touch the fewest pages)."""
    os.environ["HOME"] = tmpdir
    os.environ["TMPDIR"] = tmpdir


# compiled in the template before each fork (trusted sources only: prompt, preamble, tests;
# never the program), once per template and source, so the runs of a problem share them
_CODE_CACHE: dict[tuple[str, str], Any] = {}
_CODE_CACHE_MAX = 50_000
_CODE_SOURCE_MAX = 200_000
# the template's own snapshot of builtins and the modules it preloaded (see _snapshot_modules)
_SNAPSHOTS: dict[str, tuple[Any, list, list, dict]] = {}


def _trusted_sources(req: dict[str, Any]) -> list[tuple[str, str]]:
    sources = [(req.get("preamble") or "", "<test>")]
    if req.get("prompt"):
        sources.append((req["prompt"], "<prompt>"))
    for t in req["tests"]:
        sources.append(("\n".join(t.get("setup", [])) or "pass", "<test>"))
        sources.append((t["code"], "<test>"))
    return sources


def precompile(req: dict[str, Any]) -> None:
    """In the template, before forking a function run: compile its trusted sources unless
    already cached. A source that does not compile is left to the run, which reports it."""
    if req.get("kind") != "function":
        return
    if len(_CODE_CACHE) > _CODE_CACHE_MAX:
        _CODE_CACHE.clear()
    for key in _trusted_sources(req):
        if key not in _CODE_CACHE and len(key[0]) <= _CODE_SOURCE_MAX:
            try:
                _CODE_CACHE[key] = compile(key[0], key[1], "exec")
            except Exception:  # noqa: BLE001 - the run compiles it again and fails there
                pass


def _compile(source: str, name: str) -> Any:
    code = _CODE_CACHE.get((source, name))
    return code if code is not None else compile(source, name, "exec")


def presnapshot(names: list[str]) -> None:
    """In the template, after its imports: snapshot builtins and `names` once; a run reuses
    an entry while the module is still exactly as snapshotted (checked by identity)."""
    _SNAPSHOTS.clear()
    _SNAPSHOTS.update(_snapshot_modules(names))


def _install_guard(tmpdir: str, state: dict) -> None:
    root = os.path.realpath(tmpdir) + os.sep

    def inside(path: Any) -> bool:
        if isinstance(path, int):
            return True  # an already-open descriptor: opening it was checked
        try:
            p = os.fsdecode(path)
        except TypeError:
            return False
        full = os.path.realpath(p if os.path.isabs(p) else os.path.join(root, p))
        return (full + os.sep).startswith(root)

    main = _thread.get_ident()

    def hook(event: str, args: tuple) -> None:
        if not state["armed"]:
            return
        if (
            event == "object.__getattr__"
            and state["formatting"]
            and args[1] in ("tb_frame", "f_code")
            and _thread.get_ident() == main
        ):
            return
        if event in _BLOCKED or event.startswith(_BLOCKED_PREFIXES):
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "import" and args[0].split(".")[0] in _BLOCKED_MODULES:
            raise PermissionError(f"sandbox: importing {args[0]} is not allowed")
        if event == "open":
            path, mode, flags = args[0], args[1], args[2]
            writing = (mode and any(c in str(mode) for c in "wax+")) or (
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
            )
            p = os.fsdecode(path) if isinstance(path, str | bytes) else ""
            if p.startswith("/proc") and not p.startswith("/proc/self/stat"):
                raise PermissionError("sandbox: /proc is not readable")
            if writing and not inside(path):
                raise PermissionError(f"sandbox: writing outside the run directory ({p})")
        elif event in _PATH_EVENTS:
            for a in args[:2]:
                if isinstance(a, str | bytes | os.PathLike) and not inside(a):
                    raise PermissionError(f"sandbox: {event} outside the run directory")

    sys.addaudithook(hook)


def _plain(value: Any, depth: int = 0) -> bool:
    t = type(value)
    if t in _PLAIN:
        return True
    if t in _CONTAINERS and depth < 20:
        items = value.items() if t is dict else value
        if t is dict:
            return all(_plain(k, depth + 1) and _plain(v, depth + 1) for k, v in items)
        return all(_plain(v, depth + 1) for v in items)
    return False


def _safe_repr(value: Any, limit: int = 300) -> str:
    """repr of plain values only: no program code runs while feedback is formatted."""
    if not _plain(value):
        return f"<{type(value).__name__} object>"
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


_ALL_SIGNALS = _signal.valid_signals()
_MISSING = object()
_TYPE_NAME = type.__dict__["__name__"]
_EXC_ARGS = BaseException.__dict__["args"]


def _classify(exc: BaseException, state: dict, per_test: float) -> tuple[str, dict]:
    """Status of a test from what it raised; reads the exception without running its code."""
    if isinstance(exc, _TestTimeout):
        return "timeout", {"error": f"the test ran past {per_test:g} s"}
    if isinstance(exc, MemoryError):
        return "memory", {"error": "MemoryError"}
    if isinstance(exc, AssertionError):
        return "failed", {"error": _describe(exc, state)}
    return "error", {"error": _describe(exc, state)}


def _describe(exc: BaseException, state: dict, limit: int = 600) -> str:
    """Type, plain arguments and the program/test lines of a traceback. Attributes are read
    through the base descriptors, so an exception class of the program cannot run code here."""
    args = _EXC_ARGS.__get__(exc)
    shown = ", ".join(_safe_repr(a, 200) for a in args) if type(args) is tuple else ""
    name = _TYPE_NAME.__get__(type(exc), type)
    head = f"{name}({shown})" if shown else name
    lines = []
    # tb_frame may be read in this window, by this thread only; signals wait, so no handler of
    # the program runs inside it; nothing read here calls program code
    # (_signal's C functions: signal's wrappers turn every signal number into an enum, slowly)
    blocked = _signal.pthread_sigmask(_signal.SIG_BLOCK, _ALL_SIGNALS)
    state["formatting"] = True
    try:
        tb = exc.__traceback__
        while tb is not None:
            code = tb.tb_frame.f_code
            if code.co_filename in ("<program>", "<test>"):
                lines.append(f"{code.co_filename} line {tb.tb_lineno} in {code.co_name}")
            tb = tb.tb_next
    finally:
        state["formatting"] = False
        _signal.pthread_sigmask(_signal.SIG_SETMASK, blocked)
    text = head + ("\n  " + "\n  ".join(lines[-4:]) if lines else "")
    return text[:limit]


def _snapshot_modules(names: list[str]) -> dict[str, tuple[Any, list, list, dict]]:
    """The modules the tests use (and builtins): a program that patches `math.isclose` or
    `builtins.abs` to fake a pass has its change undone before each test."""
    import importlib

    snap = {}
    for name in ["builtins", *names]:
        cached = _SNAPSHOTS.get(name)
        if cached is not None and sys.modules.get(name) is cached[0] and _unchanged(cached):
            snap[name] = cached
            continue
        try:
            mod = importlib.import_module(name)
        except Exception:  # noqa: BLE001 - a test importing a missing module fails by itself
            continue
        saved = dict(mod.__dict__)
        snap[name] = (mod, list(saved), list(saved.values()), saved)
    return snap


def _unchanged(entry: tuple[Any, list, list, dict]) -> bool:
    """Whether a module's namespace still holds exactly the snapshotted objects. Compared by
    identity, in C (map/operator.is_): no `==` of a program's object runs here."""
    mod, keys, values, _ = entry
    d = mod.__dict__
    return len(d) == len(keys) and all(
        map(operator.is_, map(d.get, keys, itertools.repeat(_MISSING)), values)
    )


def _restore_modules(snap: dict[str, tuple[Any, list, list, dict]]) -> None:
    """Undo what the program did to already-loaded modules (builtins, math, ...)."""
    for name, entry in snap.items():
        mod, saved = entry[0], entry[3]
        if sys.modules.get(name) is not mod:
            sys.modules[name] = mod
        if not _unchanged(entry):
            d = mod.__dict__
            d.clear()
            d.update(saved)


def run_function(req: dict[str, Any], vfd: int) -> None:
    """Run the program, then each test; write `<nonce> <status> <feedback>` per test."""
    import json

    nonces = req.pop("nonces")
    tests = req["tests"]
    per_test = float(req["limits"]["test_timeout_s"])
    state = {"armed": False, "formatting": False}

    def emit(i: int, status: str, info: dict) -> None:
        line = f"{nonces[i]} {status} {json.dumps(info)}\n".encode()
        os.write(vfd, line)

    # trusted helpers from the prompt (HumanEval tests may call them, e.g. `poly`): the program
    # may redefine them, the tests still get the prompt's own
    helpers: dict[str, Any] = {"__name__": "__helpers__", "__builtins__": builtins}
    if req.get("prompt"):
        try:
            exec(_compile(req["prompt"], "<prompt>"), helpers)
        except BaseException:  # noqa: BLE001 - a prompt that does not run gives no helpers
            helpers = {}
        helpers.pop(req["entry_point"], None)
    helpers = {k: v for k, v in helpers.items() if not k.startswith("__")}
    preamble = _compile(req.get("preamble") or "", "<test>")
    compiled = [
        (_compile("\n".join(t.get("setup", [])) or "pass", "<test>"), _compile(t["code"], "<test>"))
        for t in tests
    ]
    snap = _snapshot_modules(req.get("test_modules", []))

    def on_alarm(signum: int, frame: Any) -> None:
        raise _TestTimeout()

    signal.signal(signal.SIGALRM, on_alarm)
    _install_guard(req["tmpdir"], state)
    program_ns: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
    state["armed"] = True
    signal.setitimer(signal.ITIMER_REAL, per_test)
    try:
        exec(compile(req["program"], "<program>", "exec"), program_ns)
        load_error = None
    except BaseException as e:  # noqa: BLE001 - SystemExit and friends are program errors
        signal.setitimer(signal.ITIMER_REAL, 0)
        status, info = _classify(e, state, per_test)
        info["error"] = "while loading the program: " + info.get("error", "")
        load_error = ("error" if status == "failed" else status, info)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    # the hook stays armed from here to the end of the process: the harness code below needs
    # nothing it refuses, and a program thread or signal handler never meets an open window
    candidate = program_ns.get(req["entry_point"])
    if load_error is None and not callable(candidate):
        load_error = ("error", {"error": f"the program defines no function {req['entry_point']}"})
    if load_error is not None:
        for i in range(len(tests)):
            emit(i, *load_error)
        return
    last = {"value": None, "set": False}

    def guarded(*args: Any, **kwargs: Any) -> Any:
        value = candidate(*args, **kwargs)
        if not _plain(value):
            raise UntrustedReturn(
                f"returned a {type(value).__name__}; only plain values (numbers, strings, "
                "lists, tuples, dicts, sets, None) are compared"
            )
        last["value"], last["set"] = value, True
        return value

    for i, (setup, code) in enumerate(compiled):
        _restore_modules(snap)
        ns = dict(program_ns)
        ns.update(helpers)
        ns["candidate"] = guarded
        ns["__builtins__"] = builtins
        last["set"] = False
        status, info = "passed", {}
        signal.setitimer(signal.ITIMER_REAL, per_test)
        try:
            exec(preamble, ns)
            exec(setup, ns)
            exec(code, ns)
        except BaseException as e:  # noqa: BLE001 - classified below, disarmed first
            signal.setitimer(signal.ITIMER_REAL, 0)
            status, info = _classify(e, state, per_test)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        if status != "passed" and last["set"]:
            info["got"] = _safe_repr(last["value"])
        emit(i, status, info)


def run_stdio(req: dict[str, Any]) -> None:
    """Run the program as __main__ with stdin/stdout already redirected to files."""
    state = {"armed": False, "formatting": False}
    _install_guard(req["tmpdir"], state)
    ns = {"__name__": "__main__", "__builtins__": builtins}
    code = compile(req["program"], "<program>", "exec")
    state["armed"] = True
    try:
        exec(code, ns)
    except SystemExit as e:
        if e.code not in (None, 0):
            sys.stdout.flush()
            os._exit(1)
    except MemoryError:
        sys.stdout.flush()
        os._exit(3)
    except BaseException as e:  # noqa: BLE001
        try:
            sys.stderr.write(_describe(e, state) + "\n")
        finally:
            sys.stdout.flush()
            os._exit(1)
    sys.stdout.flush()
