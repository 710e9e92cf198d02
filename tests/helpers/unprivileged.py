"""Run a command as an ordinary user (uid/gid 65534, no groups, no capabilities) that can still
run this checkout's interpreter: `python -m tests.helpers.unprivileged CMD...`, as root.

The interpreter may lie under a folder closed to other users (a pyenv Python under /root, mode
0700). In a mount namespace of this process's own (the host's is untouched and nothing is left
behind when it exits), each such folder is covered by a small read-only tmpfs holding only the
trees needed, bind-mounted at their own paths; then setpriv drops to the ordinary user and runs
CMD. What the sandbox does as that user (user namespaces, its own mounts) it does unaided."""

from __future__ import annotations

import os
import sys

from bdc_ray.sandbox.layers import _sys

NOBODY = 65534


def _closed_ancestor(path: str) -> str | None:
    parts = os.path.realpath(path).split(os.sep)[1:]
    for i in range(1, len(parts) + 1):
        folder = os.sep + os.sep.join(parts[:i])
        if not os.stat(folder).st_mode & 0o001:
            return folder
    return None


def expose(trees: list[str]) -> None:
    blocked: dict[str, list[str]] = {}
    for tree in sorted({os.path.realpath(t) for t in trees}):
        top = _closed_ancestor(tree)
        if top is not None and not any(tree.startswith(t + os.sep) for t in blocked.get(top, [])):
            blocked.setdefault(top, []).append(tree)
    for top, inside in blocked.items():
        fds = [os.open(t, os.O_PATH) for t in inside]
        _sys.mount("tmpfs", top, "tmpfs", 0, "size=1m,mode=0755")
        for tree, fd in zip(inside, fds, strict=True):
            os.makedirs(tree, mode=0o755, exist_ok=True)
            _sys.mount(f"/proc/self/fd/{fd}", tree, None, _sys.MS_BIND | _sys.MS_REC)
            os.close(fd)
        _sys.mount(None, top, None, _sys.MS_REMOUNT | _sys.MS_RDONLY)


def main() -> None:
    if os.geteuid() != 0:
        raise SystemExit("run as root: it sets up the view, then drops to an ordinary user")
    try:
        _sys.unshare(_sys.CLONE_NEWNS)
        _sys.mount(None, "/", None, _sys.MS_REC | _sys.MS_PRIVATE)
    except OSError as e:
        raise SystemExit(f"no mount namespace: {e}") from None
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    expose([sys.base_prefix, sys.prefix, repo])
    os.execvp(
        "setpriv",
        [
            "setpriv",
            f"--reuid={NOBODY}",
            f"--regid={NOBODY}",
            "--clear-groups",
            "--",
            *sys.argv[1:],
        ],
    )


if __name__ == "__main__":
    main()
