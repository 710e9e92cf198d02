"""Credentials of a run. As root: a uid and gid of the slot's own (62000 + slot) with no
supplementary groups, so a run owns no file of the host and cannot signal another slot's
processes; the change from uid 0 clears every capability. In a user namespace: the one mapped
uid, with every capability dropped, so the namespaces and mounts the template set up cannot
be undone. No new privileges were set once in the template (no setuid binary gains any)."""

from __future__ import annotations

import os

from . import _sys


def apply(uid: int | None) -> None:
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    else:
        _sys.drop_capabilities()
