"""Isolated execution of untrusted programs against tests (see supervisor.Sandbox).

Imports are lazy so that the sandbox template (``bdc_ray.sandbox.template``), which every run
is forked from, stays small: a smaller parent makes every fork cheaper.
"""

from typing import Any

__all__ = ["CheckResult", "Limits", "Sandbox", "SandboxUnavailable", "TestResult"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import supervisor

        return getattr(supervisor, name)
    raise AttributeError(name)
