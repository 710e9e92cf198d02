"""Serve the customised solver of a run directory as an OpenAI-compatible API (Ray Serve).

    python jobs/serve.py --run-dir runs/demo [--host 127.0.0.1] [--port 8000]
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        $PWD/.venv/bin/python jobs/serve.py --run-dir $PWD/runs/demo

Then any OpenAI client: base_url http://127.0.0.1:8000/v1, model "bdc-customized" (see
`serve.*` in the config for batching, replicas, autoscaling and the optional API key).
Runs until interrupted; `--detach` returns once the app is up and leaves it on the cluster.
"""

from __future__ import annotations

import sys
import time

import _common  # noqa: F401  (puts the project on sys.path)
from _common import init_ray, load, log, parser, run_main


def start_serving(cfg, run_dir: str) -> str:
    """Deploy the app of `run_dir` on the connected Ray (Serve listening on serve.host:port);
    returns the API's base URL. Bad settings raise ValueError / FileNotFoundError."""
    from ray import serve

    from bdc_ray.serve.app import api_key_from_env, build_app

    key = api_key_from_env(cfg.serve)
    application = build_app(run_dir, cfg.serve, key)
    init_ray(cfg)
    serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port})
    serve.run(application, name="bdc", route_prefix="/")
    url = f"http://{cfg.serve.host}:{cfg.serve.port}/v1"
    log.info("serving %s at %s (key: %s)", cfg.serve.model_name, url, "yes" if key else "none")
    print(f"OpenAI-compatible API at {url}, model {cfg.serve.model_name!r}", flush=True)
    return url


def wait_forever() -> None:
    from ray import serve

    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()


def main(argv: list[str] | None = None) -> str:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--host", help="address to bind (default serve.host: 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default serve.port: 8000)")
    p.add_argument("--detach", action="store_true", help="return once the app is running")
    args = p.parse_args(argv)
    if args.host:
        args.overrides.append(f"serve.host={args.host}")
    if args.port:
        args.overrides.append(f"serve.port={args.port}")
    cfg = load(args)
    try:
        url = start_serving(cfg, args.run_dir)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if not args.detach:
        wait_forever()
    return url


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
