"""Boost throughput: does the search keep the model busy, and does it scale out?

    python benchmarks/explore.py [--model smollm2-135m-instruct] [--problems 4]

1. Engine efficiency. MC-Tree-Of-Agents search on HumanEval problems through TreeManager,
   AgentLLM (transformers backend) and the ExecutorPool; `engine_tokens_per_s` = tokens the
   model generated / search wall time. Then the same backend, in the same actor, generates
   batches of the search's average batch size with the same sampling and no search:
   `raw_tokens_per_s`. `efficiency` = engine / raw (target >= 0.7).
2. Scaling. Agents simulated by actors with a fixed per-call latency (no model) at 1, 4, 16 and
   64 actors, trees in proportion; throughput = LLM calls per second.
   `scaling_efficiency_at_64` = throughput(64) / (64 x throughput(1)) (target >= 0.8).
Prints tables, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ray  # noqa: E402

from bdc_ray.actors.agent import create_agent_llm  # noqa: E402
from bdc_ray.actors.executor import create_executor_pool  # noqa: E402
from bdc_ray.actors.replicas import ReplicaGroup  # noqa: E402
from bdc_ray.actors.tree_manager import TreeManagerActor  # noqa: E402
from bdc_ray.boost.prompts import simulate_messages  # noqa: E402
from bdc_ray.config import AgentConfig, ModelConfig, SearchConfig  # noqa: E402
from bdc_ray.data import load_humaneval  # noqa: E402
from bdc_ray.llm.base import Completion, Sampling  # noqa: E402
from bdc_ray.sandbox import CheckResult, TestResult  # noqa: E402


def engine_efficiency(model: str, n_problems: int, tmp: Path) -> dict:
    problems = load_humaneval()[:n_problems]
    agents = [
        AgentConfig(name="planner", model="m", temperature=0.8, max_tokens=128),
        AgentConfig(name="coder", model="m", temperature=0.8, max_tokens=128),
    ]
    search = SearchConfig(
        width=2, trials=1, rollouts=1, max_refines=1, early_stop=False, concurrent_trees=n_problems
    )
    llm = create_agent_llm(
        ModelConfig(path=model, max_batch_size=16, batch_wait_ms=20, num_cpus=1), "bench:0"
    )
    pool = create_executor_pool(
        slots=1, limits={"test_timeout_s": 1.0, "total_timeout_s": 4.0}, name="bench:pool"
    )
    tm = TreeManagerActor.options(num_cpus=0).remote(
        agents,
        {a.name: ReplicaGroup.of_handles([llm]) for a in agents},
        ReplicaGroup.of_handles([pool]),
        search,
        0,
    )
    ray.get(llm.info.remote())  # model loaded
    before = ray.get(llm.info.remote())
    t = time.perf_counter()
    ray.get(tm.explore.remote(problems, "bench", str(tmp)))
    wall = time.perf_counter() - t
    after = ray.get(llm.info.remote())
    tokens = after["completion_tokens"] - before["completion_tokens"]
    batches = after["batches"] - before["batches"]
    prompts = after["prompts"] - before["prompts"]
    avg_batch = max(1, round(prompts / max(batches, 1)))
    # the same actor, the same sampling and batch size, nothing else going on
    msgs = [
        simulate_messages(problems[i % len(problems)], ["Loop over the input."])
        for i in range(avg_batch)
    ]
    sp = Sampling(max_tokens=128, temperature=0.8, top_p=0.95, seed=1)
    raw_tokens, raw_time = 0, 0.0
    for _ in range(3):
        t = time.perf_counter()
        out = ray.get(llm.generate.remote(msgs, sp))
        raw_time += time.perf_counter() - t
        raw_tokens += sum(c.completion_tokens for c in out)
    for h in (tm, llm, pool):
        ray.kill(h)
    engine = tokens / wall
    raw = raw_tokens / raw_time
    return {
        "engine_tokens_per_s": round(engine, 2),
        "raw_tokens_per_s": round(raw, 2),
        "efficiency": round(engine / raw, 3),
        "search_wall_s": round(wall, 1),
        "search_tokens": tokens,
        "avg_batch": avg_batch,
        "llm_calls": prompts,
    }


@ray.remote(num_cpus=0)
class LatencyAgent:
    """A model stand-in: one call at a time, each taking `latency` seconds."""

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.lock = asyncio.Lock()
        self.calls = 0

    async def generate(self, prompts, sampling):
        async with self.lock:
            await asyncio.sleep(self.latency)
        self.calls += len(prompts)
        out = []
        for p in prompts:
            text = p[-1]["content"]
            if "Propose" in text:
                body = json.dumps(
                    [{"thought": f"step {i}", "Reasonableness": 0.5} for i in range(2)]
                )
            else:
                body = "```python\ndef f():\n    return 1\n```"
            out.append(Completion(body, 50, 20, "stop"))
        return out


@ray.remote(num_cpus=0)
class InstantChecker:
    async def check(self, program, problem, tests):
        return CheckResult("failed", [TestResult(0, "passed"), TestResult(1, "failed", "x")], 0.0)


def scaling(sizes: list[int], latency: float, tmp: Path, rollouts: int = 4) -> list[dict]:
    problem_pool = load_humaneval()
    search = SearchConfig(width=2, trials=1, rollouts=rollouts, max_refines=0, early_stop=False)
    agent = AgentConfig(name="agent", model="m")
    checker = InstantChecker.remote()
    rows = []
    for k in sizes:
        actors = [LatencyAgent.remote(latency) for _ in range(k)]
        ray.get(
            [a.generate.remote([[{"role": "user", "content": "warm"}]], Sampling()) for a in actors]
        )
        n_problems = 2 * k  # two trees per actor keep every actor busy
        cfg = search.model_copy(update={"concurrent_trees": n_problems})
        tm = TreeManagerActor.options(num_cpus=0).remote(
            [agent],
            {"agent": ReplicaGroup.of_handles(actors)},
            ReplicaGroup.of_handles([checker]),
            cfg,
            0,
        )
        problems = [problem_pool[i % len(problem_pool)] for i in range(n_problems)]
        t = time.perf_counter()
        ray.get(tm.explore.remote(problems, f"scale{k}", str(tmp)))
        wall = time.perf_counter() - t
        calls = ray.get(tm.get_progress.remote())["llm_calls"]
        rows.append({"actors": k, "calls": calls, "wall_s": wall, "calls_per_s": calls / wall})
        for a in [tm, *actors]:
            ray.kill(a)
    return rows


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--problems", type=int, default=4)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--latency", type=float, default=0.25)
    ap.add_argument("--rollouts", type=int, default=4, help="per tree in the scaling run")
    ap.add_argument("--skip-engine", action="store_true")
    args = ap.parse_args(argv)
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="bench-explore-"))
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    result: dict = {"bench": "explore"}
    if not args.skip_engine:
        eng = engine_efficiency(args.model, args.problems, tmp)
        print(
            f"engine: {eng['engine_tokens_per_s']} tok/s during search, raw {eng['raw_tokens_per_s']} "
            f"tok/s at batch {eng['avg_batch']}: efficiency {eng['efficiency']}"
        )
        result.update(eng)
    rows = scaling(args.sizes, args.latency, tmp, args.rollouts)
    base = rows[0]["calls_per_s"]
    print(f"\n{'actors':>6} {'calls':>6} {'wall s':>7} {'calls/s':>8} {'efficiency':>10}")
    for r in rows:
        r["efficiency"] = r["calls_per_s"] / (r["actors"] * base)
        print(
            f"{r['actors']:>6} {r['calls']:>6} {r['wall_s']:>7.1f} {r['calls_per_s']:>8.1f} {r['efficiency']:>10.2f}"
        )
    result["scaling"] = [
        {k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()} for r in rows
    ]
    result["latency_s"] = args.latency
    top = rows[-1]
    result[f"scaling_efficiency_at_{top['actors']}"] = round(top["efficiency"], 3)
    ray.shutdown()
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
