"""Resource limits of a run, set before any program code: CPU seconds (soft below hard, so
the kernel's SIGXCPU, reported as a timeout, comes before its SIGKILL), address space, file
size (bounds stdout/stderr, which are memfds, and every file in /tmp), open files, no core
dumps, and processes (per uid: only meaningful with a uid of the slot's own)."""

from __future__ import annotations

import resource
from typing import Any


def apply(limits: dict[str, Any], uid: int | None) -> None:
    cpu = int(limits["cpu_s"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    for res, value in (
        (resource.RLIMIT_AS, int(limits["memory_mb"]) << 20),
        (resource.RLIMIT_FSIZE, int(limits["file_mb"]) << 20),
        (resource.RLIMIT_NOFILE, int(limits["open_files"])),
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_STACK, 8 << 20),  # whatever the slot's (a run cannot change it)
        (resource.RLIMIT_NPROC, int(limits["processes"])),
    ):
        if res == resource.RLIMIT_NPROC and uid is None:
            continue  # the one host uid of a user namespace is shared with the user's own work
        resource.setrlimit(res, (value, value))
