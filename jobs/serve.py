"""Serve the customised solver of a run directory as an OpenAI-compatible API (Ray Serve).

    python jobs/serve.py --run-dir runs/demo [--host 127.0.0.1] [--port 8000]
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        $PWD/.venv/bin/python jobs/serve.py --run-dir $PWD/runs/demo

Then any OpenAI client: base_url http://127.0.0.1:8000/v1, model "bdc-customized" (see
`serve.*` in configs/README.md and docs/serving.md). Runs until interrupted; `--detach` returns
once the app is up and leaves it on the cluster.
"""

from __future__ import annotations

import sys

import _common
from _common import init_ray, load, parser, run_main

from bdc_ray.pipeline.serve import ServedSolver
from bdc_ray.rundir import RunDir


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
    cfg = load(args, models=False, data=False)  # the served run names its own model
    run = RunDir(args.run_dir)
    try:  # a run in a store: each replica fetches the solver from it on its own node
        served = ServedSolver(run.storage.spec, cfg.serve)  # bad settings fail before Ray starts
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    init_ray(cfg)
    served.start()
    print(f"OpenAI-compatible API at {served.url}, model {cfg.serve.model_name!r}", flush=True)
    if not args.detach:
        _common.wait_forever()
    return served.url


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
