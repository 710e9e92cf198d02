"""ExecutorPool: a Ray actor that runs many sandboxed checks at once on its node's CPUs;
`eval.executor_pools` of them, spread over the nodes, form the group search and evaluation
send programs to (round robin), each reporting its isolation layers when it starts.

When the actor's process ends, the sandbox template sees its control socket close and exits,
and with it (PID 1 of its namespace) every process a program left. Search and evaluation both
call it; calls are async, so neither blocks the other. At most
`slots` programs execute at once (the sandbox's own slots); up to `max_pending` more wait in
the actor, and beyond that Ray queues callers (back-pressure instead of unbounded memory).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import ray

from bdc_ray.config import EvalConfig
from bdc_ray.data.problems import Problem, TestCase
from bdc_ray.sandbox import CheckResult, Limits, Sandbox

from .replicas import ReplicaGroup

log = logging.getLogger(__name__)


class ExecutorPool:
    def __init__(
        self,
        slots: int | None = None,
        limits: Limits | dict[str, Any] | None = None,
        name: str = "",
    ) -> None:
        self.slots = slots or max(1, os.cpu_count() or 1)
        self.name = name
        # rebuilt on arrival, so a limits object from another version of the class fails here
        given = asdict(limits) if isinstance(limits, Limits) else dict(limits or {})
        self.sandbox = Sandbox(concurrency=self.slots, limits=Limits(**given))
        self._gate: asyncio.Semaphore | None = None
        self.done = 0

    def isolation(self) -> dict[str, Any]:
        """The layers in force on this pool's node, and where that is."""
        return {
            **self.sandbox.isolation,
            "pool": self.name,
            "node_id": ray.get_runtime_context().get_node_id(),
            "host": socket.gethostname(),
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


def _pool_options(cpus: float, resources: dict[str, float], max_pending: int,
                  max_restarts: int, spread: bool) -> dict[str, Any]:  # fmt: skip
    # SPREAD: pools land on different nodes while resources allow, so every node's CPUs run
    # programs; a pool whose node died is restarted (on another node if need be)
    return dict(
        num_cpus=cpus,
        resources=dict(resources),
        max_concurrency=max_pending,
        max_restarts=max_restarts,
        # a check is safe to repeat; while a dead node is being detected every attempt to
        # reach it spends a retry, so a bounded number can run out before the restart
        max_task_retries=-1,
        **({"scheduling_strategy": "SPREAD"} if spread else {}),
    )


def _wait_placed(pools: list[Any], names: list[str], cpus: float, timeout_s: float) -> list:
    """Each pool's isolation report once it runs; a pool the cluster cannot place fails with a
    message instead of hanging (and every pool of the group is stopped)."""
    refs = [p.isolation.remote() for p in pools]
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    if len(ready) < len(refs):
        for p in pools:
            ray.kill(p)
        free = ray.available_resources().get("CPU", 0)
        late = [n for n, r in zip(names, refs, strict=True) if r not in ready]
        raise RuntimeError(
            f"sandbox pool(s) {', '.join(late)} ask Ray for {cpus} CPU(s) each (plus any "
            f"eval.executor_resources) and could not be placed within {timeout_s:.0f} s "
            f"({free} CPU free now): lower eval.executor_cpus, eval.workers or "
            "eval.executor_pools, or give Ray more CPUs (resources.num_cpus)"
        )
    reports = ray.get(refs)
    for rep in reports:
        missing = ", ".join(rep["missing"]) or "none"
        log.info("sandbox pool %s on %s (node %s): %d slots, isolation layers missing: %s",
                 rep["pool"], rep["host"], rep["node_id"][:12], rep["slots"], missing)  # fmt: skip
    return reports


def create_executor_pool(
    slots: int | None = None,
    limits: Limits | dict[str, Any] | None = None,
    name: str = "bdc:executor",
    max_pending: int = 256,
    max_restarts: int = 3,
    num_cpus: float | None = None,
    ready_timeout_s: float = 120.0,
    resources: dict[str, float] | None = None,
) -> Any:
    """Start (or reuse) one pool and wait until it runs. It reserves `num_cpus` (default: one
    per slot) and any custom `resources`."""
    slots = slots or max(1, os.cpu_count() or 1)
    cpus = slots if num_cpus is None else num_cpus
    opts = _pool_options(cpus, resources or {}, max_pending, max_restarts, spread=False)
    pool = ExecutorPoolActor.options(name=name, get_if_exists=True, **opts).remote(
        slots, limits, name
    )
    _wait_placed([pool], [name], cpus, ready_timeout_s)
    return pool


def sandbox_limits(eval_cfg: EvalConfig) -> Limits:
    """The sandbox limits an evaluation config sets (search uses the same)."""
    return Limits(
        test_timeout_s=eval_cfg.timeout_s,
        total_timeout_s=eval_cfg.timeout_s * 4,
        allow_missing=tuple(eval_cfg.sandbox_allow_missing),
        packages=tuple(eval_cfg.sandbox_packages),
    )


def executor_pools_for(eval_cfg: EvalConfig, name: str = "bdc:executor",
                       ready_timeout_s: float = 120.0) -> ReplicaGroup:  # fmt: skip
    """The `eval.executor_pools` pools an evaluation config asks for, started and placed, as a
    group that sends each check to the next pool. Methods evaluated at once each name their
    own group, so one finishing does not end another's."""
    cpus = eval_cfg.workers if eval_cfg.executor_cpus is None else eval_cfg.executor_cpus
    n = eval_cfg.executor_pools
    pools = ReplicaGroup(
        ExecutorPoolActor,
        name,
        n,
        args=(eval_cfg.workers, asdict(sandbox_limits(eval_cfg))),
        options=_pool_options(cpus, eval_cfg.executor_resources, 256, 3, spread=n > 1),
        health_method="stats",
    ).start()
    _wait_placed(pools.handles, [pools.name(i) for i in range(n)], cpus, ready_timeout_s)
    return pools


@contextlib.contextmanager
def executor_pool(eval_cfg: EvalConfig, name: str = "bdc:executor") -> Iterator[ReplicaGroup]:
    """:func:`executor_pools_for`, stopped when the block ends, however it ends."""
    group = executor_pools_for(eval_cfg, name)
    try:
        yield group
    finally:
        group.stop()


def pool_scorer(pools: ReplicaGroup):
    """A scorer for :func:`bdc_ray.eval.methods.record_answers`: complete tests, spread over
    the pools."""

    def score(problems: list[Problem], programs: list[str]) -> list[CheckResult]:
        refs = [pools.call("check", prog, p) for p, prog in zip(problems, programs, strict=True)]
        return ray.get(refs)

    return score
