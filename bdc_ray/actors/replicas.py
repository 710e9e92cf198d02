"""One object per group of model replicas: start them, route calls, check health, restart one,
stop them all (also as a context manager, so an error in the caller never leaves actors behind).

Explore hands each agent's group to the TreeManager (a copy travels with it and routes there);
evaluation routes its chunks through one. Calls go round robin, so chunk i of a sequence lands on
replica i mod n.
"""

from __future__ import annotations

import logging
from typing import Any

import ray

from ..config import ModelConfig

log = logging.getLogger(__name__)


class ReplicaGroup:
    """`n` named actors of one class; names are `<prefix>:<i>` (Ray reuses a live one)."""

    def __init__(
        self,
        actor_cls: Any,
        prefix: str,
        n: int,
        args: tuple = (),
        options: dict[str, Any] | None = None,
        health_method: str = "info",
    ) -> None:
        if n < 1:
            raise ValueError(f"a replica group needs at least one replica, got {n}")
        self._cls = actor_cls
        self.prefix = prefix
        self.n = n
        self._args = args
        self._options = dict(options or {})
        self.health_method = health_method
        self.handles: list[Any] = []
        self._next = 0

    @classmethod
    def of_model(cls, model_cfg: ModelConfig, name: str, prefix: str = "bdc") -> ReplicaGroup:
        """`model_cfg.replicas` AgentLLM actors of one model, named `<prefix>:llm:<name>:<i>`."""
        from .agent import AgentLLMActor, agent_llm_options

        return cls(
            AgentLLMActor,
            f"{prefix}:llm:{name}",
            model_cfg.replicas,
            args=(model_cfg,),
            options=agent_llm_options(model_cfg),
        )

    @classmethod
    def of_handles(cls, handles: list[Any], prefix: str = "replicas") -> ReplicaGroup:
        """A group over actors made elsewhere (a benchmark's stand-ins); it routes and stops
        them but cannot restart one."""
        group = cls(None, prefix, len(handles))
        group.handles = list(handles)
        return group

    def name(self, i: int) -> str:
        return f"{self.prefix}:{i}"

    def _create(self, i: int) -> Any:
        options = {**self._options, "name": self.name(i), "get_if_exists": True}
        return self._cls.options(**options).remote(*self._args, self.name(i))

    def start(self) -> ReplicaGroup:
        """Create the replicas (or find live ones of the same names); returns at once, calls
        queue until a replica is up."""
        if not self.handles:
            self.handles = [self._create(i) for i in range(self.n)]
        return self

    def next(self) -> Any:
        """The replica the next call goes to (round robin)."""
        if not self.handles:
            raise RuntimeError(f"replica group {self.prefix} is not started")
        handle = self.handles[self._next % len(self.handles)]
        self._next += 1
        return handle

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """`replica.method.remote(*args)` on the next replica: an ObjectRef (also awaitable)."""
        return getattr(self.next(), method).remote(*args, **kwargs)

    def health(self, timeout_s: float = 30.0) -> list[bool]:
        """Whether each replica answered its health method within `timeout_s`."""
        refs = [getattr(h, self.health_method).remote() for h in self.handles]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        ok = []
        for ref in refs:
            try:
                ok.append(ref in ready and ray.get(ref) is not None)
            except ray.exceptions.RayError:
                ok.append(False)
        return ok

    def restart(self, i: int) -> None:
        """Replace replica `i` with a fresh actor of the same name (calls in flight on the old
        one fail; the caller's retries go to the new one)."""
        if self._cls is None:
            raise RuntimeError(f"replica group {self.prefix} cannot create actors here")
        ray.kill(self.handles[i], no_restart=True)
        self.handles[i] = self._create(i)

    def stop(self) -> None:
        for h in self.handles:
            try:
                ray.kill(h)
            except Exception as e:  # noqa: BLE001 - an actor already gone is stopped
                log.debug("stopping %s: %s", self.prefix, e)
        self.handles = []

    def __enter__(self) -> ReplicaGroup:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __getstate__(self) -> dict[str, Any]:
        # a copy sent to another actor routes calls; only its creator starts and stops actors
        return {**self.__dict__, "_cls": None}
