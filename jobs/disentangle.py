"""Disentangle, first half: embed the training examples with Ray Data and cluster them with faiss
(stage `disentangle`).

    python jobs/disentangle.py --config configs/local.yaml --run-dir runs/demo

Reads RUN_DIR/sft/ (the explore stage's output) and writes RUN_DIR/clusters/ and
RUN_DIR/plots/clusters.png. The stage itself: bdc_ray/pipeline/disentangle.py.
"""

from __future__ import annotations

import json
import sys

import _common  # noqa: F401  (puts the project on sys.path)
from _common import init_ray, load, parser, run_main

from bdc_ray.pipeline.disentangle import disentangle, training_examples
from bdc_ray.rundir import RunDir


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--force", action="store_true", help="recluster even if outputs exist")
    args = p.parse_args(argv)
    cfg = load(args, models=False, data=False)  # training_examples reads what it needs
    run = RunDir(args.run_dir)
    with run.synced():
        training_examples(cfg, run)  # a malformed example file fails here, before Ray starts
        init_ray(cfg)
        meta = disentangle(cfg, run, force=args.force)
    print(json.dumps({k: v for k, v in meta.items() if k != "fingerprint"}))
    return meta


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
