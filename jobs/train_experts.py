"""Disentangle, second half: one LoRA expert per cluster plus `full` with Ray Train + DeepSpeed,
then the linear/TIES/DARE merges (stage `experts`).

    python jobs/train_experts.py --config configs/local.yaml --run-dir runs/demo [--experts full]

Reads RUN_DIR/clusters/ (jobs/disentangle.py) and writes RUN_DIR/experts/<name>/ in peft format.
The stage itself: bdc_ray/pipeline/experts.py.
"""

from __future__ import annotations

import json
import sys

import _common  # noqa: F401  (puts the project on sys.path)
from _common import init_ray, load, parser, run_main

from bdc_ray.pipeline.experts import train_experts
from bdc_ray.rundir import RunDir


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument(
        "--experts", nargs="*", default=None, help="train only these (full cluster_0 ...)"
    )
    args = p.parse_args(argv)
    cfg = load(args, data=False)  # reads no problem file
    run = RunDir(args.run_dir)
    init_ray(cfg)
    with run.synced():
        summary = train_experts(cfg, run, args.experts)
    print(json.dumps(summary["experts"], indent=1))
    return summary


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
