"""The whole pipeline as one Ray job.

    python jobs/full.py --config configs/local.yaml --run-dir runs/demo
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        $PWD/.venv/bin/python jobs/full.py --config configs/local.yaml --run-dir $PWD/runs/demo

Runs the stages of bdc_ray/pipeline/stages.py in order, each skipped when its outputs exist for
an unchanged config, then writes run/report.md (methods table, stage times, plots); with --serve
it goes on to serve the customised solver (jobs/serve.py) until stopped.
"""

from __future__ import annotations

import sys

import _common
from _common import init_ray, load, parser, run_main

from bdc_ray.pipeline import STAGES, run_pipeline, summary_text
from bdc_ray.rundir import RunDir


def main(argv: list[str] | None = None) -> dict:
    stages = "\n".join(f"  {s.name:12} {s.summary}" for s in STAGES)
    p = parser(__doc__.splitlines()[1], epilog=f"stages:\n{stages}")
    names = [s.name for s in STAGES]
    p.add_argument("--stages", nargs="+", choices=["all", *names], default=["all"],
                   help="stages to run (default all, in pipeline order)")  # fmt: skip
    p.add_argument("--serve", action="store_true",
                   help="after the stages, serve the customised solver until stopped")  # fmt: skip
    args = p.parse_args(argv)
    cfg = load(args)
    run = RunDir(args.run_dir)
    init_ray(cfg)
    results, timings = run_pipeline(cfg, run, None if "all" in args.stages else args.stages)
    print(summary_text(run, timings))
    if args.serve:
        from bdc_ray.pipeline.serve import start_serving

        served = start_serving(cfg.serve, run.storage.spec)
        print(f"OpenAI-compatible API at {served.url}, model {cfg.serve.model_name!r}", flush=True)
        _common.wait_forever()
    return results


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
