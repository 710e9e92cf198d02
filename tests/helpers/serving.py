"""The Serve app for tests that talk to it over HTTP."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator


@contextlib.contextmanager
def serve_app(solver_run, cfg, name: str, api_key: str | None = None) -> Iterator[str]:
    """The Serve app of `solver_run` on a free local port, for a module's tests: its URL."""
    from ray import serve

    from bdc_ray.serve.app import build_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(solver_run, cfg, api_key=api_key), name=name, route_prefix="/")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.delete(name)
        serve.shutdown()
