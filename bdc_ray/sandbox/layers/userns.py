"""User namespace (only where the sandbox does not run as root): the template enters a
namespace of its own in which the invoking user's uid is the only one mapped (to itself; no
uid 0 exists there, so `setuid(0)` fails), and holds the capabilities that let it create the
network, PID and mount namespaces and mounts below, without any privilege on the host. Runs stay that
one host uid; they are kept apart by their PID and mount namespaces and hold no capabilities
(creds), and the host sees every file they could touch as the invoking user's."""

from __future__ import annotations

import os

from ..protocol import Layer
from . import _sys


def enter(required: bool) -> Layer:
    uid, gid = os.geteuid(), os.getegid()
    if uid == 0:
        return Layer("user_namespace", True, required, "not needed: running as root")
    try:
        _sys.unshare(_sys.CLONE_NEWUSER)
        with open("/proc/self/setgroups", "w") as f:
            f.write("deny")  # required before an unprivileged gid_map; groups stay as they are
        with open("/proc/self/uid_map", "w") as f:
            f.write(f"{uid} {uid} 1")
        with open("/proc/self/gid_map", "w") as f:
            f.write(f"{gid} {gid} 1")
    except OSError as e:
        return Layer(
            "user_namespace",
            False,
            required,
            f"the kernel refused an unprivileged user namespace ({e.strerror}; see "
            "/proc/sys/user/max_user_namespaces and kernel.apparmor_restrict_unprivileged_userns)",
        )
    return Layer("user_namespace", True, required, f"host uid {uid} alone, mapped to itself")
