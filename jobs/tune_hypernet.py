"""Customize: search the hypernetwork's settings with Ray Tune and keep the best (stage
`hypernet`).

    python jobs/tune_hypernet.py --config configs/local.yaml --run-dir runs/demo

Reads RUN_DIR/clusters/ and the cluster experts in RUN_DIR/experts/; writes RUN_DIR/hypernet/
and RUN_DIR/plots/tune.png. The stage itself: bdc_ray/pipeline/hypernet.py.
"""

from __future__ import annotations

import json
import sys

import _common  # noqa: F401  (puts the project on sys.path)
from _common import init_ray, load, parser, run_main

from bdc_ray.pipeline.hypernet import tune_hypernet
from bdc_ray.rundir import RunDir


def main(argv: list[str] | None = None) -> dict:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    cfg = load(args, data=False)  # reads no problem file
    run = RunDir(args.run_dir)
    init_ray(cfg)
    with run.synced():
        summary = tune_hypernet(cfg, run)
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
