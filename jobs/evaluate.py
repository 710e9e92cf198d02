"""Evaluate System-1 solvers on the test split: greedy, direct problem-to-code prompt, programs
scored in the sandbox on the complete tests (stages `zero_shot` and `evaluate`).

    python jobs/evaluate.py --config configs/local.yaml --run-dir runs/demo [--methods full cluster_0]

Without `--methods`: both baselines, every adapter under RUN_DIR/experts/ and `customized` when
RUN_DIR/hypernet/ exists. A method already evaluated under the same config and adapter is
skipped. The methods: bdc_ray/methods.py; the stage: bdc_ray/pipeline/evaluate.py.
"""

from __future__ import annotations

import sys

import _common  # noqa: F401  (puts the project on sys.path)
from _common import init_ray, load, parser, run_main

from bdc_ray.eval.methods import format_table
from bdc_ray.methods import METHODS
from bdc_ray.pipeline.evaluate import evaluate_methods
from bdc_ray.rundir import RunDir


def main(argv: list[str] | None = None) -> dict:
    known = "\n".join(f"  {m.name + ('<...>' if m.family else ''):16} needs {m.needs}"
                      for m in METHODS)  # fmt: skip
    p = parser(__doc__.splitlines()[0], epilog=f"methods:\n{known}")
    p.add_argument("--methods", nargs="*", default=None, help="methods to evaluate (see below)")
    args = p.parse_args(argv)
    cfg = load(args)
    run = RunDir(args.run_dir)
    init_ray(cfg)
    with run.synced():
        out = evaluate_methods(cfg, run, args.methods)
    print("\n" + format_table(run.load_results()["methods"]))
    return out


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
