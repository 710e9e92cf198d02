"""Stages `zero_shot` and `evaluate`: System-1 solvers on the test split, greedy, programs scored
in the sandbox on the complete tests (docs/method.md#what-is-compared).

`zero_shot` evaluates the base model directly (`base_zero_shot`) and in two stages (thoughts,
then code: `base_two_stage`); `evaluate` every adapter under experts/ (`full`, each cluster
expert, each merge) and `customized` when hypernet/ exists. A method already evaluated under the
same config and the same adapter is skipped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

from ..config import Config, ModelConfig
from ..data import load_problems, make_split
from ..data.problems import Problem
from ..eval.methods import record_answers
from ..llm.base import Completion, Prompt, Sampling
from ..llm.prompts import direct_messages
from ..methods import Kind, method_of, method_rank, methods_of_stage
from ..rundir import RunDir, atomic_write_text
from .stages import EVAL_SECTIONS, StageInputError

log = logging.getLogger(__name__)

ADAPTER_META = ("examples", "steps", "final_loss", "experts", "combination_type")


def split_test_problems(cfg: Config, run: RunDir) -> list[Problem]:
    problems = {p.id: p for p in load_problems(cfg.data)}
    split = make_split(list(problems.values()), cfg.data, run.root)
    return [problems[i] for i in split.test]


def generate_in_order(group: Any, prompts: list[Prompt], sampling: Sampling, chunk: int,
                      desc: str) -> list[Completion]:  # fmt: skip
    """Completions of `prompts` in order, `chunk` prompts a call, spread over the group's
    replicas (chunk i on replica i mod n)."""
    import ray
    from tqdm import tqdm

    refs = [group.call("generate", prompts[i : i + chunk], sampling)
            for i in range(0, len(prompts), chunk)]  # fmt: skip
    out: list[Completion] = []
    with tqdm(total=len(prompts), desc=desc, unit="problem", mininterval=5) as bar:
        for ref in refs:
            got = ray.get(ref)
            out.extend(got)
            bar.update(len(got))
    return out


def _answers(cfg: Config, group: Any, test: list[Problem], method: str, two_stage: bool):
    """(completions, thought tokens): the direct prompt, or thoughts first (the p2t prompt)
    and then code from them (the t2c prompt)."""
    greedy = Sampling(max_tokens=cfg.eval.max_tokens, temperature=0.0, seed=cfg.seed)
    chunk = cfg.eval.batch_size
    if not two_stage:
        prompts = [direct_messages(p) for p in test]
        return generate_in_order(group, prompts, greedy, chunk, method), 0
    from ..boost.prompts import fallback_thoughts, p2t_messages, simulate_messages

    plan_sampling = Sampling(max_tokens=cfg.eval.thought_tokens, temperature=0.0, seed=cfg.seed)
    plans = generate_in_order(group, [p2t_messages(p) for p in test], plan_sampling, chunk,
                              f"{method} (thoughts)")  # fmt: skip
    prompts = [simulate_messages(p, [t for t, _ in fallback_thoughts(c.text, 8)])
               for p, c in zip(test, plans, strict=True)]  # fmt: skip
    completions = generate_in_order(group, prompts, greedy, chunk, method)
    return completions, sum(c.completion_tokens for c in plans)


def _record(cfg, run, method, test, completions, start, extra) -> dict:
    """Score the answers in a sandbox pool and record them as `method`."""
    from ..actors.executor import executor_pool, pool_scorer

    gen_s = time.perf_counter() - start
    with executor_pool(cfg.eval, name=f"bdc:executor:{method}") as pool:
        summary = record_answers(run, method, test, [c.text for c in completions],
                                 scorer=pool_scorer(pool),
                                 extra={"generate_s": round(gen_s, 1), **extra})  # fmt: skip
    # wall time includes scoring, so it is known only now
    summary["wall_s"] = round(time.perf_counter() - start, 1)
    run.record_method(method, summary, {})
    return summary


def evaluate_direct(cfg: Config, run: RunDir, method: str, model_cfg: ModelConfig,
                    fingerprint: str = "", extra: dict | None = None,
                    two_stage: bool = False) -> dict:  # fmt: skip
    """Answers for the test split from `model_cfg`'s replicas (greedy), scored and recorded."""
    from ..actors.replicas import ReplicaGroup

    test = split_test_problems(cfg, run)
    start = time.perf_counter()
    with ReplicaGroup.of_model(model_cfg, method) as group:
        completions, thought_tokens = _answers(cfg, group, test, method, two_stage)
    tokens = sum(c.completion_tokens for c in completions) + thought_tokens
    extra = {"completion_tokens": tokens, "fingerprint": fingerprint, **(extra or {})}
    return _record(cfg, run, method, test, completions, start, extra)


def evaluate_customized(cfg: Config, run: RunDir, fingerprint: str = "",
                        model_cfg: ModelConfig | None = None) -> dict:  # fmt: skip
    """Method `customized`: the hypernetwork-gated mixture of the cluster experts, generated
    in one Ray task that loads everything from the run directory."""
    import ray

    from ..actors.solver import customized_generate

    test = split_test_problems(cfg, run)
    model_cfg = model_cfg or cfg.models[cfg.base_model]
    start = time.perf_counter()
    sampling = Sampling(max_tokens=cfg.eval.max_tokens, temperature=0.0, seed=cfg.seed)
    task = ray.remote(customized_generate).options(
        num_cpus=model_cfg.num_cpus,
        num_gpus=model_cfg.num_gpus,
        resources=dict(model_cfg.resources),
        max_retries=1,
    )
    prompts = [direct_messages(p) for p in test]
    completions = ray.get(task.remote(run.storage.spec, prompts, sampling, model_cfg))
    gates = {
        p.id: {"gates": c.meta["gates"], "nearest_cluster": c.meta["nearest_cluster"]}
        for p, c in zip(test, completions, strict=True)
    }
    atomic_write_text(run.eval / "gates_customized.json", json.dumps(gates, indent=1))
    extra = {"completion_tokens": sum(c.completion_tokens for c in completions),
             "fingerprint": fingerprint}  # fmt: skip
    return _record(cfg, run, "customized", test, completions, start, extra)


def eval_fingerprint(cfg: Config, adapter: Path | None = None) -> str:
    """Config of decoding and scoring, plus the adapter's own identity (its training log or
    merge record): a retrained expert is evaluated again."""
    h = hashlib.sha256(cfg.fingerprint(*EVAL_SECTIONS).encode())
    if adapter is not None:
        for name in ("train_log.json", "merge.json", "adapter_model.safetensors", "hypernet.pt"):
            f = adapter / name
            if f.is_file():
                h.update(name.encode())
                h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()[:16]


def adapter_dirs(run: RunDir) -> dict[str, Path]:
    """Adapters under experts/ in table order: full, cluster_*, merged_*."""
    root = run.root / "experts"
    found = (
        {p.name: p for p in root.iterdir() if (p / "adapter_config.json").is_file()}
        if root.is_dir()
        else {}
    )

    def order(name: str) -> tuple:  # merges by their own name, experts by number
        tail = name.rsplit("_", 1)[-1]
        return (method_rank(name), int(tail) if tail.isdigit() else 0, name)

    return {n: found[n] for n in sorted(found, key=order)}


def _adapter_meta(adapter: Path) -> dict:
    meta = {}
    for name in ("train_log.json", "merge.json"):
        if (adapter / name).is_file():
            rec = json.loads((adapter / name).read_text())
            meta = {k: rec[k] for k in ADAPTER_META if k in rec}
    return {"adapter": meta} if meta else {}


def _eval_model(cfg: Config) -> ModelConfig:
    base = cfg.models[cfg.base_model]
    n = cfg.eval.concurrent_methods
    if n > 1 and base.num_threads:  # the methods at once share the threads
        base = base.model_copy(update={"num_threads": max(1, base.num_threads // n)})
    return base


def _plan(cfg: Config, run: RunDir, method: str, base: ModelConfig,
          adapters: dict[str, Path]) -> tuple[str, Callable[[], dict]]:  # fmt: skip
    """(fingerprint, zero-argument function evaluating `method`). Any adapter folder under
    experts/ is evaluable, also one of a name no row of METHODS has (a user's own)."""
    kind = Kind.ADAPTER if method in adapters else method_of(method).kind
    if kind is Kind.CUSTOMIZED:
        hyper = run.root / "hypernet"
        if not (hyper / "hypernet.json").is_file():
            raise StageInputError(f"no hypernetwork in {hyper}: run jobs/tune_hypernet.py")
        fp = eval_fingerprint(cfg, hyper)
        return fp, partial(evaluate_customized, cfg, run, fp, base)
    if kind in (Kind.DIRECT, Kind.TWO_STAGE):
        fp = eval_fingerprint(cfg)
        two = kind is Kind.TWO_STAGE
        return fp, partial(evaluate_direct, cfg, run, method, base, fp, {}, two_stage=two)
    if method in adapters:
        adapter = adapters[method]
        # where the replicas find it on their own nodes: the store's URI, or the folder
        model_cfg = base.model_copy(update={"adapter": run.where(f"experts/{adapter.name}")})
        fp = eval_fingerprint(cfg, adapter)
        return fp, partial(evaluate_direct, cfg, run, method, model_cfg, fp, _adapter_meta(adapter))
    raise StageInputError(
        f"cannot evaluate method {method!r} here ({method_of(method).needs} is needed); "
        f"adapters in {run.root / 'experts'}: {', '.join(adapters) or 'none'}"
    )


def evaluate_methods(cfg: Config, run: RunDir, methods: list[str] | None = None) -> dict:
    """Evaluate the named methods (default: both baselines, every adapter and `customized`
    when a hypernetwork exists); skip the ones already done for this config and adapter.
    `eval.concurrent_methods` run at once (Ray queues their actors when CPUs run short)."""
    adapters = adapter_dirs(run)
    if methods is None:
        methods = [*methods_of_stage("zero_shot"), *default_trained(run, adapters)]
    base, done = _eval_model(cfg), run.load_results()["methods"]
    out: dict[str, Any] = {}
    todo = []
    for method in methods:
        fp, fn = _plan(cfg, run, method, base, adapters)
        if done.get(method, {}).get("fingerprint") == fp:
            log.info("%s: evaluated for this config, skipped", method)
            out[method] = done[method]
        else:
            todo.append((method, fn))

    def one(method: str, fn: Callable[[], dict]) -> dict:
        summary = fn()
        log.info("%s: pass@1 %.3f, pass rate %.3f", method, summary["pass@1"], summary["pass_rate"])
        return summary

    with ThreadPoolExecutor(max_workers=cfg.eval.concurrent_methods) as pool:
        futures = {m: pool.submit(one, m, fn) for m, fn in todo}
        for m, f in futures.items():
            out[m] = f.result()
    return {m: out[m] for m in methods if m in out}


def default_trained(run: RunDir, adapters: dict[str, Path] | None = None) -> list[str]:
    """What the `evaluate` stage evaluates: every adapter, and `customized` with a hypernet."""
    adapters = adapter_dirs(run) if adapters is None else adapters
    hyper = (run.root / "hypernet" / "hypernet.json").is_file()
    return [*adapters, *(["customized"] if hyper else [])]


def evaluate_zero_shot(cfg: Config, run: RunDir) -> dict:
    return evaluate_methods(cfg, run, methods_of_stage("zero_shot"))


def evaluate_trained(cfg: Config, run: RunDir) -> dict:
    return evaluate_methods(cfg, run, default_trained(run))
