"""The filesystem a run sees: no path to any folder of the host but the ones it must read.

In the template (its own mount namespace, every mount private so nothing propagates either
way), once: a tmpfs root holding, read-only and at their own paths, the interpreter's standard
library (its site-packages hidden), the folders of the shared libraries the interpreter has
mapped, the packages `Limits.packages` names, `/etc/ld.so.cache`, a `/dev` of five devices,
and the template's own `/proc`; then `pivot_root` into it and the old root detached, so there
is no route back by `..`, `//`, `dir_fd`, links or `/proc/<pid>/root`. No data file of any
installed package (a benchmark's answer key among them) is in that tree.

In every run (cloned into new mount and PID namespaces): a fresh tmpfs on /tmp, capped in
bytes and inodes, owned by the run (also its /dev/shm, its cwd, HOME and TMPDIR), and a
`/proc` of its own PID namespace (pid entries only). Both vanish with the run's namespaces:
the supervisor never reads or writes a path a program could touch (stdio are memfds).
"""

from __future__ import annotations

import importlib.util
import os
import stat
import sys
import sysconfig

from ..protocol import Layer
from . import _sys

SLOT_FLAGS = _sys.CLONE_NEWNS
_DEVICES = ("null", "zero", "full", "random", "urandom")
_ST_TO_MS = {  # statvfs flags -> mount flags a bind remount must keep in a user namespace
    os.ST_NOSUID: _sys.MS_NOSUID,
    os.ST_NODEV: _sys.MS_NODEV,
    os.ST_NOEXEC: _sys.MS_NOEXEC,
    os.ST_NOATIME: _sys.MS_NOATIME,
    os.ST_NODIRATIME: _sys.MS_NODIRATIME,
    os.ST_RELATIME: _sys.MS_RELATIME,
}


def private(required: bool) -> Layer | None:
    """A mount namespace of the template's own, all of it private. None when done."""
    try:
        _sys.unshare(_sys.CLONE_NEWNS)
        _sys.mount(None, "/", None, _sys.MS_REC | _sys.MS_PRIVATE)
    except OSError as e:
        return Layer("filesystem_view", False, required, f"no mount namespace: {e.strerror}")
    return None


def _mapped_library_dirs() -> set[str]:
    dirs = set()
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(None, 5)
            path = parts[5].strip() if len(parts) == 6 else ""
            if path.startswith("/") and ".so" in os.path.basename(path):
                dirs.add(os.path.dirname(os.path.realpath(path)))
    return dirs


def _package_paths(names: tuple[str, ...]) -> list[str]:
    out = []
    for name in names:
        spec = importlib.util.find_spec(name)
        if spec is None:
            raise OSError(f"Limits.packages names {name!r}, which is not installed")
        out += list(spec.submodule_search_locations or [spec.origin])
        libs = os.path.join(os.path.dirname(out[-1]), f"{name}.libs")  # wheels' vendored libs
        if os.path.isdir(libs):
            out.append(libs)
    return [os.path.realpath(p) for p in out]


def plan(packages: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(trees bound read-only, folders hidden under an empty one) for this interpreter."""
    paths = sysconfig.get_paths()
    base = sysconfig.get_paths(vars={"base": sys.base_prefix, "platbase": sys.base_exec_prefix})
    stdlib = {os.path.realpath(p) for p in (base["stdlib"], base["platstdlib"])}
    wanted = stdlib | _mapped_library_dirs() | set(_package_paths(packages))
    if os.path.exists("/etc/ld.so.cache"):
        wanted.add("/etc/ld.so.cache")
    # /tmp, /proc and /dev of the view are the slot's own: a tree under them would be covered
    # (a virtual environment in a checkout under /tmp holds nothing runs need but site-packages)
    covered = [p for p in wanted if p.split(os.sep)[1:2] in (["tmp"], ["proc"], ["dev"])]
    if stdlib & set(covered):
        raise OSError(f"the interpreter's library ({sorted(stdlib)[0]}) lies in a folder "
                      "runs see as their own: install Python outside /tmp, /proc and /dev")  # fmt: skip
    wanted -= set(covered)
    # a tree inside another is bound with it
    trees = sorted(
        p for p in wanted if not any(p != q and p.startswith(q + os.sep) for q in wanted)
    )
    site = {os.path.realpath(base[k]) for k in ("purelib", "platlib")}
    site |= {os.path.realpath(paths[k]) for k in ("purelib", "platlib")}
    hidden = sorted(
        s for s in site if any(s.startswith(t + os.sep) for t in trees) and s not in wanted
    )
    return trees, hidden


def _bind(fd: int, source: str, target: str, readonly: bool = True) -> None:
    if os.path.isdir(source):
        os.makedirs(target, mode=0o755, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
        open(target, "a").close()
    _sys.mount(f"/proc/self/fd/{fd}", target, None, _sys.MS_BIND | _sys.MS_REC)
    if readonly:
        st = os.statvfs(source)
        keep = sum(ms for st_flag, ms in _ST_TO_MS.items() if st.f_flag & st_flag)
        flags = _sys.MS_REMOUNT | _sys.MS_BIND | _sys.MS_RDONLY | keep
        _sys.mount(None, target, None, flags)


def build_root(root: str, packages: tuple[str, ...], required: bool) -> Layer:
    """Build the minimal tree on `root` (an empty folder) and pivot into it."""
    try:
        trees, hidden = plan(packages)
        sources = trees + [f"/dev/{d}" for d in _DEVICES]
        fds = {p: os.open(p, os.O_PATH) for p in sources}  # taken before anything is covered
        try:
            _sys.mount("tmpfs", root, "tmpfs", _sys.MS_NOSUID | _sys.MS_NODEV, "size=4m,mode=0755")
            for tree in trees:
                _bind(fds[tree], tree, root + tree)
            for folder in hidden:
                flags = _sys.MS_RDONLY | _sys.MS_NOSUID | _sys.MS_NODEV | _sys.MS_NOEXEC
                _sys.mount("tmpfs", root + folder, "tmpfs", flags, "size=4k,mode=0555")
            os.makedirs(root + "/dev", mode=0o755)
            _sys.mount(
                "tmpfs", root + "/dev", "tmpfs", _sys.MS_NOSUID | _sys.MS_NOEXEC, "mode=0755"
            )
            for dev in _DEVICES:
                _bind(fds[f"/dev/{dev}"], f"/dev/{dev}", f"{root}/dev/{dev}", readonly=False)
            for name, target in (("fd", "/proc/self/fd"), ("shm", "/tmp"), ("stdin", "/proc/self/fd/0"),
                                 ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):  # fmt: skip
                os.symlink(target, f"{root}/dev/{name}")
            flags = _sys.MS_REMOUNT | _sys.MS_RDONLY | _sys.MS_NOSUID | _sys.MS_NOEXEC
            _sys.mount(None, root + "/dev", None, flags)
            for name in ("/lib", "/lib64", "/bin", "/sbin", "/lib32"):  # usrmerge's links
                if os.path.islink(name) and not os.path.lexists(root + name):
                    os.symlink(os.readlink(name), root + name)
            for name in ("/tmp", "/proc"):
                os.makedirs(root + name, mode=0o755)
            # the template's own /proc: the "fully visible" proc the kernel wants to see before
            # it lets a user namespace mount each run's own
            proc_flags = _sys.MS_NOSUID | _sys.MS_NODEV | _sys.MS_NOEXEC
            _sys.mount("proc", root + "/proc", "proc", proc_flags)
        finally:
            for fd in fds.values():
                os.close(fd)
        os.chdir(root)
        _sys.pivot_root(".", ".")  # the old root ends up stacked on the new one...
        _sys.umount(".")  # ...and is detached: no path leads to it any more
        os.chdir("/")
        _sys.mount(
            None, "/", None, _sys.MS_REMOUNT | _sys.MS_RDONLY | _sys.MS_NOSUID | _sys.MS_NODEV
        )
    except OSError as e:
        return Layer("filesystem_view", False, required, f"could not build it: {e}")
    return Layer(
        "filesystem_view",
        True,
        required,
        f"read-only: {', '.join(trees)}; hidden: {', '.join(hidden) or '-'}",
    )


def enter_slot(size_mb: int, inodes: int, uid: int | None) -> None:
    """In a slot's process (in its new mount and PID namespaces), once: its own /tmp and /proc,
    cwd /tmp. Runs of the slot follow one another there; wipe() empties /tmp between them."""
    owner = f",uid={uid},gid={uid}" if uid is not None else ""
    opts = f"size={size_mb}m,nr_inodes={inodes},mode=0700{owner}"
    _sys.mount("tmpfs", "/tmp", "tmpfs", _sys.MS_NOSUID | _sys.MS_NODEV | _sys.MS_NOEXEC, opts)
    flags = _sys.MS_NOSUID | _sys.MS_NODEV | _sys.MS_NOEXEC
    _sys.mount("proc", "/proc", "proc", flags, "subset=pid")
    os.chdir("/tmp")


def _wipe_dir(top: int) -> None:
    """Empty the folder `top` without recursion or a descriptor per level (a program may leave
    a chain of folders thousands deep): each pass removes what it can and renames the contents
    of every non-empty folder up into `top`, so every pass flattens the tree by a level; the
    inode cap bounds the passes."""
    moved = 0
    while True:
        names = os.listdir(top)
        if not names:
            return
        for name in names:
            st = os.stat(name, dir_fd=top, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode):
                os.unlink(name, dir_fd=top)
                continue
            sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=top)
            try:
                for child in os.listdir(sub):
                    moved += 1
                    while os.path.lexists(f"/tmp/.bdc-wipe-{moved}"):  # no run is left to race
                        moved += 1
                    os.rename(child, f".bdc-wipe-{moved}", src_dir_fd=sub, dst_dir_fd=top)
            finally:
                os.close(sub)
            os.rmdir(name, dir_fd=top)


def wipe(uid: int | None) -> None:
    """Empty /tmp after a run, once every process of it is gone: by descriptors, never
    following a link (the slot's process may override permissions, so a folder the program
    made unreadable is removed too), and its mode and owner restored. Raises OSError if
    anything is left. The common case, a run that left nothing, costs four calls."""
    top = os.open("/tmp", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        st = os.fstat(top)
        if st.st_mode & 0o7777 != 0o700:
            os.fchmod(top, 0o700)
        if uid is not None and (st.st_uid, st.st_gid) != (uid, uid):
            os.fchown(top, uid, uid)
        _wipe_dir(top)
    finally:
        os.close(top)
