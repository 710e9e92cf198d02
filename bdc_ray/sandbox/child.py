"""What runs inside a sandboxed process, after the template forked it.

Order matters: limits and identity are set before any untrusted byte runs; from then on an
audit hook (PEP 578; it cannot be removed) refuses frame and object-graph introspection,
ctypes, process creation, signals to other processes, sockets and writes outside the run's
directory. The verdict of each function test goes out on a pipe, tagged with a per-test nonce
that the supervisor chose; the program never holds a reference to the nonces (they live in
this module's local variables, reachable only through frames, which the hook refuses), so
printing, exiting early, or writing to the pipe cannot forge a pass.

Everything a run does after the program has loaded goes through `seal()`: the harness's
functions are rebound, in the template, to a private copy of this module's globals and of
builtins, and use the library functions captured below when this module was imported. A
program that patches `builtins`, `os.write`, `json` or this module (reachable through
`sys.modules`) changes what it sees itself, never what the harness runs or what a test reads:
tests and the prompt's helpers get the private builtins, and the modules they use are restored
after every call into the program, once its threads, timers and finalisers can no longer act.
"""

from __future__ import annotations

import _signal
import _thread
import builtins
import gc
import json.encoder
import operator
import os
import resource
import sys
import types
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
_BLOCKED = frozenset(
    {
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
)
_FRAME_EVENTS = frozenset({"sys._getframe", "sys._current_frames", "sys._current_exceptions"})
_FRAME_ATTRS = frozenset({"tb_frame", "gi_frame", "cr_frame", "ag_frame", "f_code"})
_PATH_EVENTS = frozenset(
    {
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
)
_BLOCKED_MODULES = frozenset({"ctypes", "_ctypes", "cffi", "_posixsubprocess", "multiprocessing"})
# types by identity: `t in (int, ...)` would ask a metaclass's __eq__
_PLAIN_IDS = frozenset(map(id, _PLAIN))
_CONTAINER_IDS = frozenset(map(id, _CONTAINERS))

# captured at import, in the template: the library functions the sealed harness calls once a
# program may have replaced the module attributes they came from
_os_write = os.write
_fsdecode = os.fsdecode
_realpath = os.path.realpath
_join = os.path.join
_isabs = os.path.isabs
_SEP = os.sep
_O_WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT
_setitimer = _signal.setitimer
_set_handler = _signal.signal
_get_handler = _signal.getsignal
_sigmask = _signal.pthread_sigmask
_SIG_BLOCK, _SIG_SETMASK, _SIG_IGN = _signal.SIG_BLOCK, _signal.SIG_SETMASK, _signal.SIG_IGN
_SIGALRM, _SIGVTALRM, _SIGPROF = _signal.SIGALRM, _signal.SIGVTALRM, _signal.SIGPROF
_ITIMER_REAL, _ITIMER_VIRTUAL, _ITIMER_PROF = (
    _signal.ITIMER_REAL,
    _signal.ITIMER_VIRTUAL,
    _signal.ITIMER_PROF,
)
_get_ident = _thread.get_ident
_thread_count = _thread._count
_gc_enable, _gc_disable = gc.enable, gc.disable
_modules = sys.modules  # the interpreter's own dict, even if a program rebinds sys.modules
_is = operator.is_
_PathLike = os.PathLike
_json_str = json.encoder.encode_basestring_ascii
_MODULE_DICT = types.ModuleType.__dict__["__dict__"]
_set_attr = object.__setattr__
_SEALED = False  # True in the private copy of these globals that seal() makes
_TEST_BUILTINS: dict[str, Any] = {}  # seal(): the private builtins of tests and helpers


class _TestTimeout(BaseException):
    """Raised by the per-test alarm; a BaseException so `except Exception` does not eat it."""


class FrameRefused(PermissionError, ValueError):
    """A frame a program asked for (sys._getframe, a traceback's or generator's frame): a
    frame leads to the harness's (and its nonces). Also a ValueError, which is what the
    library's own fallbacks expect where an interpreter has no frames: `namedtuple`,
    `TypeVar` and `Enum("Name", ...)` then work, without a frame, instead of failing."""


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


def scrub_environment() -> None:
    """In the template, once: the only variables every run sees. HOME and TMPDIR are ".", the
    run's working directory, i.e. its own folder (`tempfile` and `~` resolve there), so that no
    run has to set them (writing the environment would cost every run copied pages)."""
    keep = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": ".",
        "TMPDIR": ".",
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
    }
    os.environ.clear()
    os.environ.update(keep)


# the template's own snapshot of builtins and the modules it preloaded (see _snapshot_modules)
_SNAPSHOTS: dict[str, tuple[Any, ...]] = {}


def prepare_sources(src: dict[str, Any]) -> dict[str, Any]:
    """In the template, once per problem's trusted sources (prompt, preamble, tests; never a
    program): compiled here, inherited by every run of the problem through fork, so a run
    neither receives nor compiles them. The supervisor names each entry by a key and sends
    the sources only with the key's first run (see Sandbox._launch). A test that does not
    compile keeps its error, reported as that test's."""

    def code(source: str, name: str) -> Any:
        try:
            return compile(source, name, "exec")
        except Exception as e:  # noqa: BLE001 - SyntaxError, ValueError (NUL bytes), ...
            return f"the test does not compile: {type(e).__name__}: {e}"

    prompt, preamble = src.get("prompt") or "", src.get("preamble") or ""
    setups = ["\n".join(t.get("setup", ())) for t in src["tests"]]
    return {  # None: nothing to run
        "prompt": code(prompt, "<prompt>") if prompt.strip() else None,
        "preamble": code(preamble, "<test>") if preamble.strip() else None,
        "tests": tuple(
            (code(setup, "<test>") if setup.strip() else None, code(t["code"], "<test>"))
            for setup, t in zip(setups, src["tests"], strict=True)
        ),
        "test_modules": tuple(src.get("test_modules", ())),
    }


def presnapshot(names: list[str]) -> None:
    """In the template, after its imports: snapshot builtins and `names` once; a run reuses
    an entry while the module is still exactly as snapshotted (checked by identity)."""
    _SNAPSHOTS.clear()
    _SNAPSHOTS.update(_snapshot_modules(names))


def _install_guard(tmpdir: str, state: dict) -> None:
    sys.addaudithook(_guard(tmpdir, state))


def _guard(tmpdir: str, state: dict) -> Any:
    """The audit hook of a run in `tmpdir` (armed while `state["armed"]`). The supervisor
    sends the folder's real path (were it not, paths inside would be refused, not allowed)."""
    root = tmpdir + _SEP

    def inside(path: Any) -> bool:
        if isinstance(path, int):
            return True  # an already-open descriptor: opening it was checked
        try:
            p = _fsdecode(path)
        except TypeError:
            return False
        full = _realpath(p if _isabs(p) else _join(root, p))
        return (full + _SEP).startswith(root)

    main = _get_ident()

    def hook(event: str, args: tuple) -> None:
        if not state["armed"]:
            return
        if (
            event == "object.__getattr__"
            and state["formatting"]
            and args[1] in ("tb_frame", "f_code")
            and _get_ident() == main
        ):
            return
        if event == "object.__getattr__":
            # audited reads: a traceback's or generator's frame (refused), or a function's
            # __code__/__defaults__ or a generator's code (which lead to no frame: allowed;
            # `logging` reads one at import)
            if args[1] in _FRAME_ATTRS:
                raise FrameRefused(f"sandbox: reading {args[1]} is not allowed")
            return
        if event in _FRAME_EVENTS:
            raise FrameRefused(f"sandbox: {event} is not allowed")
        if event in _BLOCKED or event.startswith(_BLOCKED_PREFIXES):
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "import" and args[0].split(".")[0] in _BLOCKED_MODULES:
            raise PermissionError(f"sandbox: importing {args[0]} is not allowed")
        if event == "open":
            path, mode, flags = args[0], args[1], args[2]
            writing = (mode and any(c in str(mode) for c in "wax+")) or (
                isinstance(flags, int) and flags & _O_WRITE
            )
            p = _fsdecode(path) if isinstance(path, str | bytes) else ""
            if p.startswith("/proc") and not p.startswith("/proc/self/stat"):
                raise PermissionError("sandbox: /proc is not readable")
            if writing and not inside(path):
                raise PermissionError(f"sandbox: writing outside the run directory ({p})")
        elif event in _PATH_EVENTS:
            for a in args[:2]:
                if isinstance(a, str | bytes | _PathLike) and not inside(a):
                    raise PermissionError(f"sandbox: {event} outside the run directory")

    return hook


def _plain(value: Any, depth: int = 0) -> bool:
    t = type(value)
    if id(t) in _PLAIN_IDS:
        return True
    if id(t) in _CONTAINER_IDS and depth < 20:
        if t is dict:
            return all(_plain(k, depth + 1) and _plain(v, depth + 1) for k, v in value.items())
        return all(_plain(v, depth + 1) for v in value)
    return False


def _safe_repr(value: Any, limit: int = 300) -> str:
    """repr of plain values only: no program code runs while feedback is formatted."""
    if not _plain(value):
        return f"<{type(value).__name__} object>"
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


_ALL_SIGNALS = _signal.valid_signals()
_TYPE_NAME = type.__dict__["__name__"]
_EXC_ARGS = BaseException.__dict__["args"]
_EXC_TB = BaseException.__dict__["__traceback__"]


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
    blocked = _sigmask(_SIG_BLOCK, _ALL_SIGNALS)
    state["formatting"] = True
    try:
        tb = _EXC_TB.__get__(exc)  # not exc.__traceback__: a class could make that a property
        while tb is not None:
            code = tb.tb_frame.f_code
            if code.co_filename in ("<program>", "<test>"):
                lines.append(f"{code.co_filename} line {tb.tb_lineno} in {code.co_name}")
            tb = tb.tb_next
    finally:
        state["formatting"] = False
        _sigmask(_SIG_SETMASK, blocked)
    text = head + ("\n  " + "\n  ".join(lines[-4:]) if lines else "")
    return text[:limit]


def _snapshot_modules(names: list[str]) -> dict[str, tuple[Any, ...]]:
    """The modules the tests and helpers use, and builtins (for library code they call): a
    program that patches `math.isclose` or `builtins.abs` to fake a pass has its change undone.
    An entry is immutable: (module, its type, keys, values), tuples all."""
    snap = {}
    for name in ["builtins", *names]:
        cached = _SNAPSHOTS.get(name)
        if cached is not None and _modules.get(name) is cached[0] and _unchanged(cached):
            snap[name] = cached
            continue
        import importlib

        try:
            mod = importlib.import_module(name)
        except Exception:  # noqa: BLE001 - a test importing a missing module fails by itself
            continue
        d = _MODULE_DICT.__get__(mod)
        snap[name] = (mod, type(mod), tuple(d), tuple(d.values()))
    return snap


def _unchanged(entry: tuple[Any, ...]) -> bool:
    """Whether a module is still as snapshotted: same type, as many names, bound in the same
    order to the same objects. Compared by identity, in C (map/operator.is_): no `==` of a
    program's object runs here. The names themselves are not read: in a run every object read
    is written (its reference count), and the key strings of builtins alone lie on ~100 pages
    the run would otherwise copy; rebinding, adding or removing a name changes the values'
    order or count (a name renamed in place, same position and object, is not seen: it can
    only make a missing name resolve, never change what an existing one means)."""
    mod, cls, keys, values = entry
    if type(mod) is not cls:
        return False
    d = _MODULE_DICT.__get__(mod)
    return len(d) == len(values) and all(map(_is, d.values(), values))


def _restore_modules(snap: dict[str, tuple[Any, ...]]) -> None:
    """Undo what the program did to already-loaded modules (builtins, math, ...)."""
    for name, entry in snap.items():
        mod, cls, keys, values = entry
        if _modules.get(name) is not mod:
            _modules[name] = mod
        if not _unchanged(entry):
            if type(mod) is not cls:
                _set_attr(mod, "__class__", cls)
            d = _MODULE_DICT.__get__(mod)
            d.clear()
            d.update(zip(keys, values, strict=True))


def _on_alarm(signum: int, frame: Any) -> None:
    raise _TestTimeout()


def _settle() -> str | None:
    """After program code ran (its load, each call): stop what could still run program code
    later, in the harness's time. Collection (finalisers) was switched off by the caller;
    timers and their handlers are reset here; threads cannot be stopped, so a program that
    leaves one running gets an error (returned) for the test."""
    # the profiling timers' handlers by identity (no `==` of a program's object): while both
    # are still "ignore", a timer of the program raises only ignored signals (a handler that
    # faulthandler put in at the C level would only print frame names). The alarm's handler
    # is set again each time: faulthandler could have replaced it unseen.
    if _get_handler(_SIGVTALRM) is not _SIG_IGN or _get_handler(_SIGPROF) is not _SIG_IGN:
        _setitimer(_ITIMER_VIRTUAL, 0)
        _setitimer(_ITIMER_PROF, 0)
        _set_handler(_SIGVTALRM, _SIG_IGN)
        _set_handler(_SIGPROF, _SIG_IGN)
    _set_handler(_SIGALRM, _on_alarm)
    running = _thread_count()
    if running:
        return (
            f"the program left {running} thread(s) running; a running thread could change "
            "what the test reads, so its result is not trusted"
        )
    return None


def seal() -> tuple[Any, Any]:
    """In the template, once: `run_function` and `run_stdio` bound to a private copy of this
    module's globals, in which every function of the module is rebound the same way and
    builtins are a private copy too. Nothing a program can reach refers to that copy (the
    alarm handler, which `signal.getsignal` hands out, gets globals of its own)."""
    own = globals()
    private = dict(own)
    private["__builtins__"] = dict(builtins.__dict__)
    for name, value in own.items():
        if type(value) is types.FunctionType and value.__globals__ is own:
            f = types.FunctionType(
                value.__code__, private, value.__name__, value.__defaults__, value.__closure__
            )
            f.__kwdefaults__ = value.__kwdefaults__
            private[name] = f
    private["_on_alarm"] = types.FunctionType(
        _on_alarm.__code__, {"__builtins__": {}, "_TestTimeout": _TestTimeout}, "_on_alarm"
    )
    private["_TEST_BUILTINS"] = private["__builtins__"]
    private["_SEALED"] = True
    return private["run_function"], private["run_stdio"]


# a trusted problem that warm_up() runs in the template: code of the kind programs and tests
# are, with tests that pass, fail and raise, so that every path of the harness runs
_WARM_PROGRAM = """
import math
from typing import List


def solve(xs: List[int], k: int = 2) -> list:
    \"\"\"The multiples of k in xs, doubled, without repeats, sorted.\"\"\"
    out = []
    for x in xs:
        if x % k == 0 and x * k not in out and not math.isnan(float(x)):
            out.append(x * k)
    seen = {str(v): len(str(v)) for v in out}
    return sorted(out) if seen else []
"""
_WARM_TESTS = (
    "assert solve([1, 2, 3, 4]) == [4, 8]",
    "assert solve([]) == []",
    "assert solve([6, 9, 9], k=3) == [18, 27]",
    "assert abs(solve([10])[0] - 20) < 1e-6",
    "assert solve([2]) == [5]",
    "assert solve(None) == []",
)


def warm_up(run_function: Any, rounds: int = 12) -> list[str]:
    """In the template, once, before the first fork: run the sealed harness on a trusted
    problem a few times, without its audit hook (which could not be removed again). What a
    first run does once per process (quickening the harness's bytecode, filling the type
    attribute cache, interning names) then happens here, once, instead of in every run, where
    each such write copies a page shared with the template. Leaves the template's signal
    handlers, timers and collector as they were. Returns the statuses of the last round."""
    g = run_function.__globals__
    install, handlers = g["_install_guard"], {s: _signal.getsignal(s) for s in _WARM_SIGNALS}
    src = prepare_sources(
        {
            "prompt": _WARM_PROGRAM.split("    out = []")[0] + "    pass\n",
            "preamble": "import math",
            "tests": [{"code": t} for t in _WARM_TESTS],
            "test_modules": ["math"],
        }
    )
    r, w = os.pipe()
    g["_install_guard"] = lambda tmpdir, state: None
    lines: list[str] = []
    try:
        for i in range(rounds):
            req = {
                "program": _WARM_PROGRAM,
                "entry_point": "solve",
                "nonces": [f"warm{i}.{j}" for j in range(len(_WARM_TESTS))],
                "limits": {"test_timeout_s": 5.0},
                "tmpdir": "/",
                "src": src,
            }
            run_function(req, w)
            lines = os.read(r, 1 << 16).decode().splitlines()
        hook = _guard("/nonexistent", {"armed": True, "formatting": False})
        for event, args in _WARM_EVENTS:
            try:
                hook(event, args)
            except PermissionError:
                pass
    finally:
        g["_install_guard"] = install
        _setitimer(_ITIMER_REAL, 0)
        for sig, handler in handlers.items():
            _set_handler(sig, handler)
        _gc_enable()
        os.close(r)
        os.close(w)
    return [line.split(" ", 2)[1] for line in lines]


_WARM_SIGNALS = (_SIGALRM, _SIGVTALRM, _SIGPROF)
_WARM_EVENTS = (
    ("exec", (None,)),
    ("compile", (None, "<program>")),
    ("import", ("math", None, None, None, None)),
    ("open", ("data.txt", "r", 0)),
    ("open", ("/etc/passwd", "w", 1)),
    ("os.remove", ("x", -1)),
    ("object.__getattr__", (None, "tb_frame")),
    ("sys._getframe", (None,)),
)


def run_function(req: dict[str, Any], vfd: int) -> None:
    """Run the program, then each test; write `<nonce> <status> <feedback>` per test."""
    if not _SEALED:
        return seal()[0](req, vfd)
    nonces = req.pop("nonces")
    src = req["src"]  # the problem's compiled trusted sources (prepare_sources)
    if src is None or len(src["tests"]) != len(nonces):
        raise RuntimeError("the template holds no compiled tests for this run")
    per_test = float(req["limits"]["test_timeout_s"])
    state = {"armed": False, "formatting": False}

    def emit(i: int, status: str, info: dict[str, str]) -> None:
        body = ", ".join(f"{_json_str(k)}: {_json_str(v)}" for k, v in info.items())
        _os_write(vfd, f"{nonces[i]} {status} {{{body}}}\n".encode())

    # trusted helpers from the prompt (HumanEval tests may call them, e.g. `poly`): the program
    # may redefine them, the tests still get the prompt's own, with the private builtins
    helpers: dict[str, Any] = {"__name__": "__helpers__", "__builtins__": _TEST_BUILTINS}
    if src["prompt"] is not None:
        try:
            exec(src["prompt"], helpers)
        except BaseException:  # noqa: BLE001 - a prompt that does not run gives no helpers
            helpers = {}
        helpers.pop(req["entry_point"], None)
    helpers = {k: v for k, v in helpers.items() if not k.startswith("__")}
    preamble = src["preamble"]
    compiled = src["tests"]
    snap = _snapshot_modules(src["test_modules"])

    _set_handler(_SIGALRM, _on_alarm)
    _install_guard(req["tmpdir"], state)
    program_ns: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
    state["armed"] = True
    _setitimer(_ITIMER_REAL, per_test)
    try:
        exec(compile(req["program"], "<program>", "exec"), program_ns)
        load_error = None
    except BaseException as e:  # noqa: BLE001 - SystemExit and friends are program errors
        _setitimer(_ITIMER_REAL, 0)
        status, info = _classify(e, state, per_test)
        info["error"] = "while loading the program: " + info.get("error", "")
        load_error = ("error" if status == "failed" else status, info)
    finally:
        _setitimer(_ITIMER_REAL, 0)
    # the hook stays armed from here to the end of the process: the harness code below needs
    # nothing it refuses, and a program thread or signal handler never meets an open window.
    # Program garbage is collected (its finalisers run) only while program code runs.
    _gc_disable()
    left = _settle()
    if load_error is None and left is not None:
        load_error = ("error", {"error": "while loading the program: " + left})
    candidate = program_ns.get(req["entry_point"])
    if load_error is None and not callable(candidate):
        load_error = ("error", {"error": f"the program defines no function {req['entry_point']}"})
    if load_error is None and type(preamble) is str:
        load_error = ("error", {"error": preamble})
    if load_error is not None:
        for i in range(len(compiled)):
            emit(i, *load_error)
        return
    last = {"value": None, "set": False}

    def guarded(*args: Any, **kwargs: Any) -> Any:
        _gc_enable()
        try:
            value = candidate(*args, **kwargs)
            plain = _plain(value)
            if not plain:
                kind = _TYPE_NAME.__get__(type(value), type)
                value = None  # dropped here, where its finaliser may still run
        finally:
            _gc_disable()
            left = _settle()
            _restore_modules(snap)  # last: nothing of the program can run after it
        if left is not None:
            raise UntrustedReturn(left)
        if not plain:
            raise UntrustedReturn(
                f"returned a {kind}; only plain values (numbers, strings, "
                "lists, tuples, dicts, sets, None) are compared"
            )
        last["value"], last["set"] = value, True
        return value

    for i, (setup, code) in enumerate(compiled):
        if type(setup) is str or type(code) is str:
            emit(i, "error", {"error": setup if type(setup) is str else code})
            continue
        ns = dict(program_ns)
        ns.update(helpers)
        ns["candidate"] = guarded
        ns[req["entry_point"]] = guarded  # tests that call it by its name get the guard too
        ns["__builtins__"] = _TEST_BUILTINS
        _restore_modules(snap)
        last["set"] = False
        status, info = "passed", {}
        _setitimer(_ITIMER_REAL, per_test)
        try:
            if preamble is not None:
                exec(preamble, ns)
            if setup is not None:
                exec(setup, ns)
            exec(code, ns)
        except BaseException as e:  # noqa: BLE001 - classified below, disarmed first
            _setitimer(_ITIMER_REAL, 0)
            status, info = _classify(e, state, per_test)
        finally:
            _setitimer(_ITIMER_REAL, 0)
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
