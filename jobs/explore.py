"""Boost: explore problems with MC-Tree-Of-Agents on Ray (stage `explore`).

    python jobs/explore.py --config configs/local.yaml --run-dir runs/demo

Explores the train split (traces + SFT examples) and the test split (System 2 results scored on
the complete tests as method `mcts`). A rerun with the same run directory skips problems whose
trace exists and finishes the rest. The stage itself: bdc_ray/pipeline/explore.py.
"""

from __future__ import annotations

import sys

import _common  # noqa: F401  (puts the project on sys.path)
from _common import init_ray, load, parser, run_main

from bdc_ray.eval.methods import format_table
from bdc_ray.pipeline.explore import explore
from bdc_ray.rundir import RunDir


def main(argv: list[str] | None = None) -> dict:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    cfg = load(args)
    run = RunDir(args.run_dir)
    init_ray(cfg)
    with run.synced():  # traces of problems already searched are kept also if this one fails
        summary = explore(cfg, run)
    print("\n" + format_table(run.load_results()["methods"]))
    print(f"\nmcts pass@1 = {summary['pass@1']:.3f} on {summary['n']} test problems")
    return summary


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
