"""Network namespace: the template and every run have no network interface but a loopback
that is down, so no program reaches the host's services, the cloud metadata endpoint or the
internet, whatever it does in its own process."""

from __future__ import annotations

from ..protocol import Layer
from . import _sys

# every slot has a network namespace of its own too: abstract unix socket names are per
# network namespace, so runs of different slots cannot find each other by one
SLOT_FLAGS = _sys.CLONE_NEWNET


def enter(required: bool) -> Layer:
    try:
        _sys.unshare(_sys.CLONE_NEWNET)
    except OSError as e:
        return Layer("net_namespace", False, required, e.strerror or str(e))
    return Layer("net_namespace", True, required, "no interfaces")
