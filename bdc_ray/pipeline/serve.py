"""Serving the customised solver of a run directory (Ray Serve, OpenAI-compatible API).

`ServedSolver` is the serving side's group of model replicas: Ray Serve places, routes to,
health-checks and replaces the replicas (docs/serving.md); this object starts the app, reports
its replicas' health, redeploys it and stops it, also as a context manager.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..config import ServeConfig

log = logging.getLogger(__name__)

APP_NAME = "bdc"


class ServedSolver:
    def __init__(self, run_dir: str | Path, cfg: ServeConfig) -> None:
        from ..serve.app import api_key_from_env, build_app

        self.cfg = cfg
        self.key = api_key_from_env(cfg)  # a bad key setting fails before anything starts
        self.application = build_app(run_dir, cfg, self.key)
        self.url = f"http://{cfg.host}:{cfg.port}/v1"
        self.handle: Any = None

    def start(self) -> ServedSolver:
        """Deploy on the connected Ray (Serve listening on serve.host:port); returns when the
        replicas are up."""
        from ray import serve

        serve.start(
            proxy_location=self.cfg.proxy_location,
            http_options={"host": self.cfg.host, "port": self.cfg.port},
        )
        self.handle = serve.run(self.application, name=APP_NAME, route_prefix="/")
        log.info("serving %s at %s (key: %s)", self.cfg.model_name, self.url,
                 "yes" if self.key else "none")  # fmt: skip
        return self

    def health(self) -> dict[str, str]:
        """Each deployment's status as Serve reports it (HEALTHY, UPDATING, UNHEALTHY, ...)."""
        from ray import serve

        app = serve.status().applications.get(APP_NAME)
        if app is None:
            return {}
        return {name: str(d.status) for name, d in app.deployments.items()}

    def restart(self) -> None:
        """Delete the app and deploy it again (fresh replicas, the same settings)."""
        self.stop()
        self.start()

    def stop(self) -> None:
        from ray import serve

        serve.delete(APP_NAME)

    def __enter__(self) -> ServedSolver:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def start_serving(cfg: ServeConfig, run_dir: str | Path) -> ServedSolver:
    """Deploy the customised solver of `run_dir`; bad settings raise ValueError or
    FileNotFoundError before anything is deployed."""
    return ServedSolver(run_dir, cfg).start()
