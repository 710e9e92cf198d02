"""ExecutorPool: a Ray actor that runs many sandboxed checks at once on its node's CPUs.

When the actor's process ends, the sandbox template sees its control socket close and exits,
and with it (PID 1 of its namespace) every process a program left. Search and evaluation both
call it; calls are async, so neither blocks the other. At most
`slots` programs execute at once (the sandbox's own slots); up to `max_pending` more wait in
the actor, and beyond that Ray queues callers (back-pressure instead of unbounded memory).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import ray

from bdc_ray.config import EvalConfig
from bdc_ray.data.problems import Problem, TestCase
from bdc_ray.sandbox import CheckResult, Limits, Sandbox


class ExecutorPool:
    def __init__(
        self, slots: int | None = None, limits: Limits | dict[str, Any] | None = None
    ) -> None:
        self.slots = slots or max(1, os.cpu_count() or 1)
        # rebuilt on arrival, so a limits object from another version of the class fails here
        given = asdict(limits) if isinstance(limits, Limits) else dict(limits or {})
        self.sandbox = Sandbox(concurrency=self.slots, limits=Limits(**given))
        self._gate: asyncio.Semaphore | None = None
        self.done = 0

    def isolation(self) -> dict[str, Any]:
        return {
            **self.sandbox.isolation,
            "slots": self.slots,
            "limits": asdict(self.sandbox.limits),
            "template_pid": self.sandbox._proc.pid if self.sandbox._proc else None,
        }

    async def check(
        self, program: str, problem: Problem, tests: str | list[TestCase] = "all"
    ) -> CheckResult:
        if self._gate is None:
            self._gate = asyncio.Semaphore(self.slots)
        async with self._gate:
            result = await asyncio.to_thread(self.sandbox.check, program, problem, tests)
        self.done += 1
        return result

    async def check_many(self, items: list[tuple[str, Problem, Any]]) -> list[CheckResult]:
        return list(await asyncio.gather(*(self.check(p, prob, t) for p, prob, t in items)))

    def stats(self) -> dict[str, Any]:
        return {"done": self.done, "slots": self.slots}


ExecutorPoolActor = ray.remote(ExecutorPool)


def create_executor_pool(
    slots: int | None = None,
    limits: Limits | dict[str, Any] | None = None,
    name: str = "bdc:executor",
    max_pending: int = 256,
    max_restarts: int = 3,
    num_cpus: float | None = None,
    ready_timeout_s: float = 120.0,
) -> Any:
    """Start (or reuse) the pool and wait until it runs. It reserves `num_cpus` (default: one
    per slot); a pool the cluster cannot place fails with a message instead of hanging."""
    slots = slots or max(1, os.cpu_count() or 1)
    cpus = slots if num_cpus is None else num_cpus
    pool = ExecutorPoolActor.options(
        name=name,
        get_if_exists=True,
        num_cpus=cpus,
        max_concurrency=max_pending,
        max_restarts=max_restarts,
        max_task_retries=max_restarts,
    ).remote(slots, limits)
    try:
        ray.get(pool.stats.remote(), timeout=ready_timeout_s)
    except ray.exceptions.GetTimeoutError:
        ray.kill(pool)
        free = ray.available_resources().get("CPU", 0)
        raise RuntimeError(
            f"the ExecutorPool asks Ray for {cpus} CPU(s) and could not be placed within "
            f"{ready_timeout_s:.0f} s ({free} CPU free now): lower eval.executor_cpus or "
            "eval.workers, or give Ray more CPUs (resources.num_cpus)"
        ) from None
    return pool


def sandbox_limits(eval_cfg: EvalConfig) -> Limits:
    """The sandbox limits an evaluation config sets (search uses the same)."""
    return Limits(
        test_timeout_s=eval_cfg.timeout_s,
        total_timeout_s=eval_cfg.timeout_s * 4,
        allow_missing=tuple(eval_cfg.sandbox_allow_missing),
        packages=tuple(eval_cfg.sandbox_packages),
    )


def executor_pool_for(eval_cfg: EvalConfig, name: str = "bdc:executor") -> Any:
    """The pool an evaluation config asks for; methods evaluated at once each name their own,
    so one finishing does not end another's."""
    return create_executor_pool(
        slots=eval_cfg.workers,
        num_cpus=eval_cfg.executor_cpus,
        limits=sandbox_limits(eval_cfg),
        name=name,
    )


@contextlib.contextmanager
def executor_pool(eval_cfg: EvalConfig, name: str = "bdc:executor") -> Iterator[Any]:
    """:func:`executor_pool_for` that is stopped when the block ends, however it ends."""
    pool = executor_pool_for(eval_cfg, name)
    try:
        yield pool
    finally:
        ray.kill(pool)


def pool_scorer(pool: Any):
    """A scorer for :func:`bdc_ray.eval.methods.record_answers`: complete tests, in the pool."""

    def score(problems: list[Problem], programs: list[str]) -> list[CheckResult]:
        refs = [pool.check.remote(prog, p) for p, prog in zip(problems, programs, strict=True)]
        return ray.get(refs)

    return score
