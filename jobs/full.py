"""The whole pipeline as one Ray job.

    python jobs/full.py --config configs/local.yaml --run-dir runs/demo
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        $PWD/.venv/bin/python jobs/full.py --config configs/local.yaml --run-dir $PWD/runs/demo

Stages, in order, each skipped when its outputs exist for an unchanged config:
  zero_shot     the base model on the test split, direct and two-stage (thoughts, then code);
                programs scored in the sandbox on the complete tests    jobs/evaluate.py
  explore       Boost: MC-Tree-Of-Agents on train and test problems    jobs/explore.py
  disentangle   Ray Data embedding + faiss clustering of the SFT data   jobs/disentangle.py
  experts       Ray Train + DeepSpeed LoRA experts, then the merges     jobs/train_experts.py
  hypernet      Ray Tune search of the gating hypernetwork              jobs/tune_hypernet.py
  evaluate      `full`, every expert and merge, and `customized`        jobs/evaluate.py
"""

from __future__ import annotations

import json
import sys
import time

import _common  # noqa: F401  (puts the project on sys.path)
from _common import init_ray, load, log, parser, run_main

from bdc_ray.eval.methods import common_problems_table, format_table
from bdc_ray.rundir import RunDir, atomic_write_text

STAGES = ["zero_shot", "explore", "disentangle", "experts", "hypernet", "evaluate"]


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__.splitlines()[1])
    p.add_argument(
        "--stages",
        nargs="+",
        choices=["all", *STAGES],
        default=["all"],
        help="stages to run (default all, in pipeline order)",
    )
    args = p.parse_args(argv)
    cfg = load(args)
    run = RunDir(args.run_dir)
    init_ray(cfg)
    chosen = STAGES if "all" in args.stages else [s for s in STAGES if s in args.stages]
    timings = {}
    for stage in chosen:
        t0 = time.perf_counter()
        if stage == "zero_shot":
            from evaluate import evaluate_methods

            evaluate_methods(cfg, run, ["base_zero_shot", "base_two_stage"])
        elif stage == "explore":
            from explore import explore

            mcts = explore(cfg, run)
            log.info("mcts: %s", {k: v for k, v in mcts.items() if k != "progress"})
        elif stage == "disentangle":
            from disentangle import disentangle

            disentangle(cfg, run)
        elif stage == "experts":
            from train_experts import train_experts

            train_experts(cfg, run)
        elif stage == "hypernet":
            from tune_hypernet import tune_hypernet

            tune_hypernet(cfg, run)
        elif stage == "evaluate":
            from evaluate import adapter_dirs, evaluate_methods

            hyper = (run.root / "hypernet" / "hypernet.json").is_file()
            evaluate_methods(cfg, run, [*adapter_dirs(run), *(["customized"] if hyper else [])])
        timings[stage] = round(time.perf_counter() - t0, 1)
        log.info("stage %s: %.1f s", stage, timings[stage])
    atomic_write_text(run.root / "timings.json", json.dumps(timings, indent=1))
    results = run.load_results()
    print("\n" + format_table(results["methods"]))
    same = common_problems_table(results)
    if same:
        print(f"\nthe same table on the {len(same[0])} test problems every method ran:")
        print(same[1])
    for name, m in results["methods"].items():
        print(f"{name} pass@1 = {m['pass@1']:.3f} on {m['n']} test problems")
    print("stage wall times (s): " + ", ".join(f"{k} {v}" for k, v in timings.items()))
    print(f"results: {run.results}")
    return results


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
