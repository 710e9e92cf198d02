"""TreeManager: runs many problems' MC-Tree-Of-Agents searches at once on Ray.

Trees are asyncio tasks in one actor; their model calls go to the replica group of each
agent's model (:class:`bdc_ray.actors.replicas.ReplicaGroup`, round robin), where concurrent calls from different trees are
batched into one generate call; their programs go to the sandbox pools (round robin). Each finished problem
is written to the run directory at once (one parquet file per problem), so an interrupted run
loses only the trees in flight. A tree that raises is recorded with its error.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
import traceback
from pathlib import Path
from typing import Any

import ray

from bdc_ray.boost.data import training_examples
from bdc_ray.boost.search import MCTS
from bdc_ray.config import AgentConfig, SearchConfig
from bdc_ray.data.problems import Problem
from bdc_ray.llm.base import Completion, Prompt, Sampling

from .replicas import ReplicaGroup

log = logging.getLogger(__name__)


def trace_name(split: str, problem_id: str) -> str:
    """A trace's path inside the run."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in problem_id)
    return f"traces/{split}--{safe}.parquet"


def trace_path(run_dir: str | Path, split: str, problem_id: str) -> Path:
    return Path(run_dir) / trace_name(split, problem_id)


def trace_is_current(path: str | Path, fingerprint: str, filesystem: Any = None) -> bool:
    """A trace exists at `path` (on `filesystem`, default local), made under the config with
    this fingerprint, by a tree that did not raise."""
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    fs = filesystem or pafs.LocalFileSystem()
    if fs.get_file_info(str(path)).type != pafs.FileType.File:
        return False
    cols = ["fingerprint", "error"]
    row = pq.read_table(str(path), filesystem=fs, columns=cols).to_pylist()[0]
    return row["fingerprint"] == fingerprint and not row["error"]


@functools.lru_cache(maxsize=4)
def _storage(spec: str):
    from bdc_ray.storage import RunStorage

    return RunStorage(spec)


def empty_progress() -> dict[str, int]:
    """The TreeManager's counters before any tree ran (also what a skipped explore reports)."""
    keys = ("done", "failed", "skipped", "rollouts", "llm_calls", "tokens", "executions",
            "pruned", "refined", "in_flight")  # fmt: skip
    return dict.fromkeys(keys, 0)


class _RayLLM:
    def __init__(self, agent_models: dict[str, ReplicaGroup]) -> None:
        self.groups = agent_models

    async def generate(
        self, agent: str, prompts: list[Prompt], sampling: Sampling
    ) -> list[Completion]:
        return await self.groups[agent].call("generate", prompts, sampling)


class _RayChecker:
    def __init__(self, pools: ReplicaGroup) -> None:
        self.pools = pools

    async def check(self, program: str, problem: Problem, tests: Any) -> Any:
        return await self.pools.call("check", program, problem, tests)


class TreeManager:
    def __init__(
        self,
        agents: list[AgentConfig],
        agent_models: dict[str, ReplicaGroup],
        executors: ReplicaGroup,
        search: SearchConfig,
        seed: int = 0,
        fingerprint: str = "",
    ) -> None:
        self.fingerprint = fingerprint  # of the config a trace was made with: reruns compare it
        self.agents = [AgentConfig.model_validate(a) for a in agents]  # checked on arrival
        self.search = SearchConfig.model_validate(search)
        self.llm = _RayLLM(agent_models)
        self.checker = _RayChecker(executors)
        self.seed = seed
        self.progress = empty_progress()
        self._metrics = self._make_metrics()
        self._active: dict[str, MCTS] = {}

    @staticmethod
    def _make_metrics() -> dict[str, Any]:
        try:
            from ray.util.metrics import Counter

            names = ("rollouts", "tokens", "executions", "pruned", "refined", "problems")
            return {n: Counter(f"bdc_search_{n}", f"MCTS {n}") for n in names}
        except Exception:  # noqa: BLE001
            return {}

    def get_progress(self) -> dict[str, int]:
        """Finished trees' totals plus what the trees in flight have done so far."""
        out = dict(self.progress)
        for m in self._active.values():
            st = m.stats
            out["rollouts"] += st.rollouts
            out["llm_calls"] += st.llm_calls
            out["executions"] += st.executions
            out["tokens"] += st.prompt_tokens + st.completion_tokens
        return out

    async def explore(self, problems: list[Problem], split: str, run_dir: str) -> list[str]:
        """Search every problem; returns the ids done. Concurrent calls (the train and the test
        split at once) share one limit: at most `concurrent_trees` trees in flight."""
        if getattr(self, "_gate", None) is None:  # made in the actor's event loop
            self._gate = asyncio.Semaphore(self.search.concurrent_trees)
        gate = self._gate

        async def one(p: Problem) -> str:
            async with gate:
                if await asyncio.to_thread(self._explored, run_dir, split, p.id):
                    self.progress["skipped"] += 1
                    return p.id
                self.progress["in_flight"] += 1
                try:
                    row = await self._search(p, split)
                finally:
                    self.progress["in_flight"] -= 1
                row["fingerprint"] = self.fingerprint
                self._write(row, run_dir, split)
                return p.id

        return list(await asyncio.gather(*(one(p) for p in problems)))

    def _explored(self, run_dir: str, split: str, problem_id: str) -> bool:
        """This problem's trace under this config is in run storage already: from an earlier
        run, or from this very call before the node under this actor died (Ray restarts the
        actor elsewhere and retries the call, which then searches only what is missing)."""
        st = _storage(run_dir)
        path = st.store_path(trace_name(split, problem_id))
        return trace_is_current(path, self.fingerprint, st.fs)

    async def _verify(self, problem: Problem, result: Any) -> dict[str, bool]:
        """The best program on the hidden tests. A problem with none (a check() of one assert
        leaves every test public) cannot be verified: passing its tests is what the search
        optimised, so it is marked `passed_public_only`, never `passed_hidden`."""
        has_hidden = bool(problem.hidden_tests)
        tests = problem.hidden_tests if has_hidden else problem.tests
        verdict = (
            await self.checker.check(result.best_program, problem, tests)
            if result.best_program
            else None
        )
        passed = bool(verdict and verdict.passed)
        return {
            "has_hidden": has_hidden,
            "passed_hidden": has_hidden and passed,
            "passed_public_only": not has_hidden and passed,
        }

    async def _search(self, problem: Problem, split: str) -> dict[str, Any]:
        start = time.perf_counter()
        try:
            mcts = MCTS(problem, self.agents, self.llm, self.checker, self.search, seed=self.seed)
            self._active[problem.id] = mcts
            try:
                result = await mcts.run()
            finally:
                self._active.pop(problem.id, None)
            row = result.to_row()
            row.update(await self._verify(problem, result))
            keep = row["passed_hidden"] or (
                row["passed_public_only"] and self.search.keep_without_hidden
            )
            row["examples"] = (
                training_examples(problem, result.best_thoughts, result.best_program)
                if split == "train" and keep and result.best_thoughts
                else {}
            )
            row["error"] = ""
            s = result.stats
            for key, val in (
                ("rollouts", s.rollouts),
                ("llm_calls", s.llm_calls),
                ("executions", s.executions),
                ("pruned", s.pruned),
                ("refined", s.refined),
                ("tokens", s.prompt_tokens + s.completion_tokens),
            ):
                self.progress[key] += val
                if key in self._metrics and val > 0:  # Ray counters refuse 0
                    self._metrics[key].inc(val)
            self.progress["done"] += 1
        except Exception as e:  # noqa: BLE001 - one bad tree must not stop the job
            log.exception("search failed on %s", problem.id)
            row = {
                "problem_id": problem.id,
                "error": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc()[-2000:],
                "has_hidden": bool(problem.hidden_tests),
                "passed_hidden": False,
                "passed_public_only": False,
                "best_program": "",
                "best_thoughts": [],
                "best_reward": 0.0,
                "solved_public": False,
                "programs": [],
                "prefs": [],
                "stats": {},
                "examples": {},
                "wall_s": time.perf_counter() - start,
            }
            self.progress["failed"] += 1
        if "problems" in self._metrics:
            self._metrics["problems"].inc()
        row["split"] = split
        return row

    @staticmethod
    def _write(row: dict[str, Any], run_dir: str, split: str) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        # nested, variable structures travel as JSON columns; the flat ones stay queryable
        flat = {
            "problem_id": row["problem_id"],
            "split": split,
            "error": row["error"],
            "best_program": row["best_program"],
            "best_thoughts": row["best_thoughts"],
            "best_reward": float(row["best_reward"]),
            "solved_public": bool(row["solved_public"]),
            "has_hidden": bool(row["has_hidden"]),
            "passed_hidden": bool(row["passed_hidden"]),
            "passed_public_only": bool(row["passed_public_only"]),
            "wall_s": float(row["wall_s"]),
            "stats": json.dumps(row["stats"]),
            "programs": json.dumps(row["programs"]),
            "prefs": json.dumps(row["prefs"]),
            "examples": json.dumps(row["examples"]),
            "fingerprint": row.get("fingerprint", ""),
        }
        buf = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pylist([flat]), buf)
        # into run storage from whichever node this actor is on; a reader never sees half a
        # trace, and a trace written is kept whatever happens to the search after it
        _storage(run_dir).write_bytes(
            trace_name(split, row["problem_id"]), buf.getvalue().to_pybytes()
        )


# restarted where its node died, and the calls in flight retried there (without a limit: each
# attempt to reach a node not yet known dead spends one): they skip every problem whose trace
# was written (see `_explored`), so no tree is searched twice
TreeManagerActor = ray.remote(max_restarts=3, max_task_retries=-1)(TreeManager)
