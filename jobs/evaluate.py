"""Evaluate System-1 solvers on the test split: greedy, direct problem-to-code prompt, programs
scored in the sandbox on the complete tests.

    python jobs/evaluate.py --config configs/local.yaml --run-dir runs/demo [--methods full cluster_0]

Without `--methods`: the base model zero-shot (`base_zero_shot`) and two-stage (thoughts, then
code: `base_two_stage`), every adapter under RUN_DIR/experts/ (the `full` adapter, each cluster
expert, each merge) and `customized` when RUN_DIR/hypernet/ exists. A method already evaluated
under the same config and the same adapter is skipped.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import _common  # noqa: F401  (puts the project on sys.path)
from _common import init_ray, load, log, parser, run_main

from bdc_ray.config import Config, ModelConfig
from bdc_ray.data import load_problems, make_split
from bdc_ray.eval.methods import format_table, record_answers
from bdc_ray.llm.base import Sampling
from bdc_ray.llm.prompts import direct_messages
from bdc_ray.rundir import RunDir, atomic_write_text


def split_test_problems(cfg: Config, run: RunDir) -> list:
    problems = {p.id: p for p in load_problems(cfg.data)}
    split = make_split(list(problems.values()), cfg.data, run.root)
    return [problems[i] for i in split.test]


def evaluate_direct(
    cfg: Config,
    run: RunDir,
    method: str,
    model_cfg: ModelConfig,
    fingerprint: str = "",
    extra: dict | None = None,
    two_stage: bool = False,
) -> dict:
    """Generate answers for the test split with `model_cfg` (greedy, direct prompt) on Ray
    actors, score them with the ExecutorPool and record them as `method`. `two_stage`: first
    thoughts (the p2t prompt), then code from them (the t2c prompt), as in SPEC.md section 5."""
    import ray
    from tqdm import tqdm

    from actors.agent import create_agent_llm
    from actors.executor import executor_pool_for, pool_scorer

    test = split_test_problems(cfg, run)
    start = time.perf_counter()
    replicas = [create_agent_llm(model_cfg, f"{method}:{i}") for i in range(model_cfg.replicas)]
    sampling = Sampling(max_tokens=cfg.eval.max_tokens, temperature=0.0, seed=cfg.seed)
    chunk = cfg.eval.batch_size

    def run_all(prompts: list, s: Sampling, desc: str) -> list:
        refs = [
            replicas[(i // chunk) % len(replicas)].generate.remote(prompts[i : i + chunk], s)
            for i in range(0, len(prompts), chunk)
        ]
        out = []
        with tqdm(total=len(prompts), desc=desc, unit="problem", mininterval=5) as bar:
            for ref in refs:  # in order, so answers line up with problems
                got = ray.get(ref)
                out.extend(got)
                bar.update(len(got))
        return out

    thought_tokens = 0
    if two_stage:
        from bdc_ray.boost.prompts import fallback_thoughts, p2t_messages, simulate_messages

        plans = run_all(
            [p2t_messages(p) for p in test],
            Sampling(max_tokens=cfg.eval.thought_tokens, temperature=0.0, seed=cfg.seed),
            f"{method} (thoughts)",
        )
        thought_tokens = sum(c.completion_tokens for c in plans)
        prompts = [
            simulate_messages(p, [t for t, _ in fallback_thoughts(c.text, 8)])
            for p, c in zip(test, plans, strict=True)
        ]
    else:
        prompts = [direct_messages(p) for p in test]
    completions = run_all(prompts, sampling, method)
    gen_s = time.perf_counter() - start
    for r in replicas:
        ray.kill(r)
    pool = executor_pool_for(cfg.eval, name=f"bdc:executor:{method}")
    summary = record_answers(
        run,
        method,
        test,
        [c.text for c in completions],
        scorer=pool_scorer(pool),
        extra={
            "completion_tokens": sum(c.completion_tokens for c in completions) + thought_tokens,
            "generate_s": round(gen_s, 1),
            "fingerprint": fingerprint,
            **(extra or {}),
        },
    )
    ray.kill(pool)
    # wall time includes scoring, so it is known only now
    summary["wall_s"] = round(time.perf_counter() - start, 1)
    run.record_method(method, summary, {})
    return summary


def evaluate_customized(
    cfg: Config, run: RunDir, fingerprint: str = "", model_cfg: ModelConfig | None = None
) -> dict:
    """Method `customized`: the hypernetwork-gated mixture of the cluster experts."""
    import ray

    from actors.executor import executor_pool_for, pool_scorer

    test = split_test_problems(cfg, run)
    model_cfg = model_cfg or cfg.models[cfg.base_model]
    start = time.perf_counter()
    sampling = Sampling(max_tokens=cfg.eval.max_tokens, temperature=0.0, seed=cfg.seed)
    from actors.solver import customized_generate

    # a module function, not one of this script's: workers import it by name
    task = ray.remote(customized_generate).options(
        num_cpus=model_cfg.num_cpus, num_gpus=model_cfg.num_gpus, max_retries=1
    )
    completions = ray.get(
        task.remote(
            str(run.root.resolve()),
            [direct_messages(p) for p in test],
            sampling,
            model_cfg.model_dump(),
        )
    )
    gen_s = time.perf_counter() - start
    gates = {
        p.id: {"gates": c.meta["gates"], "nearest_cluster": c.meta["nearest_cluster"]}
        for p, c in zip(test, completions, strict=True)
    }
    atomic_write_text(run.eval / "gates_customized.json", json.dumps(gates, indent=1))
    pool = executor_pool_for(cfg.eval, name="bdc:executor:customized")
    summary = record_answers(
        run,
        "customized",
        test,
        [c.text for c in completions],
        scorer=pool_scorer(pool),
        extra={
            "completion_tokens": sum(c.completion_tokens for c in completions),
            "generate_s": round(gen_s, 1),
            "fingerprint": fingerprint,
        },
    )
    ray.kill(pool)
    summary["wall_s"] = round(time.perf_counter() - start, 1)
    run.record_method("customized", summary, {})
    return summary


def eval_fingerprint(cfg: Config, adapter: Path | None = None) -> str:
    """Config of decoding and scoring, plus the adapter's own identity (its training log or
    merge record): a retrained expert is evaluated again."""
    h = hashlib.sha256(cfg.fingerprint("data", "models", "base_model", "eval", "seed").encode())
    if adapter is not None:
        for name in ("train_log.json", "merge.json", "adapter_model.safetensors", "hypernet.pt"):
            f = adapter / name
            if f.is_file():
                h.update(name.encode())
                h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()[:16]


def adapter_dirs(run: RunDir) -> dict[str, Path]:
    """Adapters under RUN_DIR/experts in table order: full, cluster_*, merged_*."""
    root = run.root / "experts"
    found = (
        {p.name: p for p in root.iterdir() if (p / "adapter_config.json").is_file()}
        if root.is_dir()
        else {}
    )

    def order(name: str) -> tuple:
        group = 0 if name == "full" else 1 if name.startswith("cluster_") else 2
        tail = name.rsplit("_", 1)[-1]
        return (group, int(tail) if tail.isdigit() else 0, name)

    return {n: found[n] for n in sorted(found, key=order)}


def evaluate_methods(cfg: Config, run: RunDir, methods: list[str] | None = None) -> dict:
    """Evaluate the base model zero-shot (`base_zero_shot`) and the adapters; skip the ones
    already done for this config and adapter."""
    adapters = adapter_dirs(run)
    hyper = run.root / "hypernet"
    has_hyper = (hyper / "hypernet.json").is_file()
    wanted = (
        methods
        if methods is not None
        else [
            "base_zero_shot",
            "base_two_stage",
            *adapters,
            *(["customized"] if has_hyper else []),
        ]
    )
    base_cfg = cfg.models[cfg.base_model]
    n = cfg.eval.concurrent_methods
    if n > 1 and base_cfg.num_threads:  # the methods at once share the threads
        base_cfg = base_cfg.model_copy(update={"num_threads": max(1, base_cfg.num_threads // n)})
    done = run.load_results()["methods"]
    out: dict = {}
    todo = []  # (method, zero-argument function evaluating it)
    for method in wanted:
        if method == "customized":
            if not has_hyper:
                raise SystemExit(f"error: no hypernetwork in {hyper}: run jobs/tune_hypernet.py")
            fp = eval_fingerprint(cfg, hyper)
            if done.get(method, {}).get("fingerprint") == fp:
                log.info("customized: evaluated for this config, skipped")
                out[method] = done[method]
            else:
                todo.append((method, partial(evaluate_customized, cfg, run, fp, base_cfg)))
            continue
        if method in ("base_zero_shot", "base_two_stage"):
            model_cfg, adapter = base_cfg, None
        elif method in adapters:
            adapter = adapters[method]
            model_cfg = base_cfg.model_copy(update={"adapter": str(adapter.resolve())})
        else:
            raise SystemExit(
                f"error: unknown method {method!r}; adapters in {run.root / 'experts'}: "
                f"{', '.join(adapters) or 'none'}"
            )
        fp = eval_fingerprint(cfg, adapter)
        if done.get(method, {}).get("fingerprint") == fp:
            log.info("%s: evaluated for this config, skipped", method)
            out[method] = done[method]
            continue
        extra = {}
        if adapter is not None:
            for name in ("train_log.json", "merge.json"):
                if (adapter / name).is_file():
                    meta = json.loads((adapter / name).read_text())
                    extra["adapter"] = {
                        k: meta[k]
                        for k in ("examples", "steps", "final_loss", "experts", "combination_type")
                        if k in meta
                    }
        two = method == "base_two_stage"
        todo.append(
            (
                method,
                partial(evaluate_direct, cfg, run, method, model_cfg, fp, extra, two_stage=two),
            )
        )

    def one(method: str, fn) -> dict:
        summary = fn()
        log.info("%s: pass@1 %.3f, pass rate %.3f", method, summary["pass@1"], summary["pass_rate"])
        return summary

    # `eval.concurrent_methods` at once (Ray queues their actors when CPUs run short)
    with ThreadPoolExecutor(max_workers=n) as pool:
        futures = {m: pool.submit(one, m, fn) for m, fn in todo}
        for m, f in futures.items():
            out[m] = f.result()
    return {m: out[m] for m in wanted if m in out}


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__.splitlines()[1])
    p.add_argument("--methods", nargs="*", default=None, help="base_zero_shot and/or adapter names")
    args = p.parse_args(argv)
    cfg = load(args)
    run = RunDir(args.run_dir)
    init_ray(cfg)
    out = evaluate_methods(cfg, run, args.methods)
    print("\n" + format_table(run.load_results()["methods"]))
    return out


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
