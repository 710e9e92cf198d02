"""The whole pipeline as one Ray job.

    python jobs/full.py --config configs/local.yaml --run-dir runs/demo
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        $PWD/.venv/bin/python jobs/full.py --config configs/local.yaml --run-dir $PWD/runs/demo

Stages so far: the zero-shot baseline of the base model on the test split (programs scored in the
sandbox on the complete tests), then Boost: MC-Tree-Of-Agents exploration (jobs/explore.py).
"""

from __future__ import annotations

import sys
import time

import _common  # noqa: F401  (puts the project on sys.path)
from _common import init_ray, load, log, parser

from bdc_ray.config import Config
from bdc_ray.data import load_problems, make_split
from bdc_ray.eval.methods import format_table, record_answers
from bdc_ray.llm.base import Sampling
from bdc_ray.llm.prompts import direct_messages
from bdc_ray.rundir import RunDir


def zero_shot(cfg: Config, run: RunDir, fingerprint: str = "") -> dict:
    """Base model, greedy, problem -> code, scored on the complete tests."""
    import ray
    from tqdm import tqdm

    from actors.agent import create_agent_llm
    from actors.executor import executor_pool_for, pool_scorer

    problems = {p.id: p for p in load_problems(cfg.data)}
    split = make_split(list(problems.values()), cfg.data, run.root)
    test = [problems[i] for i in split.test]
    model_cfg = cfg.models[cfg.base_model]
    start = time.perf_counter()
    replicas = [
        create_agent_llm(model_cfg, f"{cfg.base_model}:{i}") for i in range(model_cfg.replicas)
    ]
    sampling = Sampling(max_tokens=cfg.eval.max_tokens, temperature=0.0, seed=cfg.seed)
    chunk = cfg.eval.batch_size
    refs = [
        replicas[(i // chunk) % len(replicas)].generate.remote(
            [direct_messages(p) for p in test[i : i + chunk]], sampling
        )
        for i in range(0, len(test), chunk)
    ]
    completions = []
    with tqdm(total=len(test), desc="zero-shot", unit="problem") as bar:
        for ref in refs:  # in order, so answers line up with problems
            out = ray.get(ref)
            completions.extend(out)
            bar.update(len(out))
    gen_s = time.perf_counter() - start
    for r in replicas:
        ray.kill(r)
    pool = executor_pool_for(cfg.eval)
    summary = record_answers(
        run,
        "base_zero_shot",
        test,
        [c.text for c in completions],
        scorer=pool_scorer(pool),
        extra={
            "completion_tokens": sum(c.completion_tokens for c in completions),
            "generate_s": round(gen_s, 1),
            "fingerprint": fingerprint,
        },
    )
    # wall time includes scoring, so it is known only now
    summary["wall_s"] = round(time.perf_counter() - start, 1)
    run.record_method("base_zero_shot", summary, {})
    ray.kill(pool)
    return summary


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__.splitlines()[1])
    p.add_argument("--stages", choices=["all", "zero_shot", "explore"], default="all")
    args = p.parse_args(argv)
    cfg = load(args)
    run = RunDir(args.run_dir)
    init_ray(cfg)
    if args.stages in ("all", "zero_shot"):
        fp = cfg.fingerprint("data", "models", "base_model", "eval", "seed")
        done = run.load_results()["methods"].get("base_zero_shot", {})
        if done.get("fingerprint") == fp:
            log.info("base_zero_shot: done for this config, skipped")
        else:
            summary = zero_shot(cfg, run, fp)
            log.info("base_zero_shot: %s", summary)
    if args.stages in ("all", "explore"):
        from explore import explore

        mcts = explore(cfg, run)
        log.info("mcts: %s", {k: v for k, v in mcts.items() if k != "progress"})
    results = run.load_results()
    print("\n" + format_table(results["methods"]))
    for name, m in results["methods"].items():
        print(f"{name} pass@1 = {m['pass@1']:.3f} on {m['n']} test problems")
    print(f"results: {run.results}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
