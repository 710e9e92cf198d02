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
then writes run/report.md (methods table, stage times, plots); with --serve it goes on to serve
the customised solver (jobs/serve.py) until stopped.
"""

from __future__ import annotations

import json
import sys
import time

import _common  # noqa: F401  (puts the project on sys.path)
from _common import init_ray, load, log, parser, run_main

from bdc_ray.eval.methods import common_problems_table, format_table
from bdc_ray.eval.report import write_report
from bdc_ray.rundir import RunDir, atomic_write_text

STAGES = ["zero_shot", "explore", "disentangle", "experts", "hypernet", "evaluate"]
# what each stage writes: a stage whose outputs did not change was skipped (up to date)
OUTPUTS = {
    "zero_shot": ["eval/samples/base_zero_shot.jsonl", "eval/samples/base_two_stage.jsonl"],
    "explore": ["traces/*.parquet", "sft/*.jsonl"],
    "disentangle": ["clusters/*"],
    "experts": ["experts/*/adapter_model.safetensors"],
    "hypernet": ["hypernet/hypernet.json"],
    "evaluate": ["eval/samples/*.jsonl"],
}


def _stamp(run: RunDir, stage: str) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for pat in OUTPUTS[stage] for p in run.root.glob(pat)}


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__.splitlines()[1])
    p.add_argument(
        "--stages",
        nargs="+",
        choices=["all", *STAGES],
        default=["all"],
        help="stages to run (default all, in pipeline order)",
    )
    p.add_argument(
        "--serve",
        action="store_true",
        help="after the stages, serve the customised solver (see jobs/serve.py) until stopped",
    )
    args = p.parse_args(argv)
    cfg = load(args)
    run = RunDir(args.run_dir)
    init_ray(cfg)
    chosen = STAGES if "all" in args.stages else [s for s in STAGES if s in args.stages]
    timings_path = run.root / "timings.json"
    previous = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    timings = {}
    for stage in chosen:
        before = _stamp(run, stage)
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
        took = round(time.perf_counter() - t0, 1)
        skipped = bool(before) and _stamp(run, stage) == before
        old = previous.get(stage)
        if skipped and isinstance(old, dict) and "wall_s" in old:
            # keep the time of the run that did the work (through any number of reruns)
            timings[stage] = {**old, "skipped": True, "check_s": took}
        else:
            timings[stage] = {"wall_s": took, "skipped": skipped}
        log.info("stage %s: %.1f s%s", stage, took, " (up to date, skipped)" if skipped else "")
    atomic_write_text(timings_path, json.dumps({**previous, **timings}, indent=1))
    report = write_report(run)
    results = run.load_results()
    print("\n" + format_table(results["methods"]))
    same = common_problems_table(results)
    if same:
        print(f"\nthe same table on the {len(same[0])} test problems every method ran:")
        print(same[1])
    for name, m in results["methods"].items():
        print(f"{name} pass@1 = {m['pass@1']:.3f} on {m['n']} test problems")
    print(
        "stage wall times (s): "
        + ", ".join(
            f"{k} {v['wall_s']}" + (" (skipped now)" if v["skipped"] else "")
            for k, v in timings.items()
        )
    )
    print(f"results: {run.results}\nreport: {report}")
    if args.serve:
        from serve import start_serving, wait_forever

        start_serving(cfg, str(run.root))
        wait_forever()
    return results


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
