"""One problem's MC-Tree-Of-Agents search (docs/method.md#boost-mc-tree-of-agents), as an asyncio coroutine.

The search talks to two interfaces, so tests can script them and Ray actors can serve them:
- `llm.generate(agent_name, prompts, sampling) -> [Completion]` (AgentLLM actors in production;
  concurrent calls from many trees are batched by the actor),
- `checker.check(program, problem, tests) -> CheckResult` (the ExecutorPool).

Each rollout: select with P-UCB down to an unexpanded decision node; expand it with every
agent's `width` thoughts; simulate every new child (every agent writes `trials` programs from the
thoughts; value = mean public pass rate); prune; reflect on live children whose best program
fails (refine siblings, at most `max_refines` per node), then prune those; back up the best new
child's value with gamma. Stops after `rollouts`, at `max_depth`, or when a program passes every public test.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from ..config import AgentConfig, SearchConfig
from ..data.problems import Problem
from ..llm.base import Completion, Prompt, Sampling, derive_seed
from ..llm.prompts import program_from_answer
from .prompts import (
    expand_messages,
    fallback_thoughts,
    parse_thoughts,
    reflect_messages,
    repair_messages,
    simulate_messages,
)
from .tree import (
    ChanceNode,
    DecisionNode,
    Program,
    backup,
    node_value,
    path_to,
    prune_children,
    select_child,
)


class LLM(Protocol):
    async def generate(
        self, agent: str, prompts: list[Prompt], sampling: Sampling
    ) -> list[Completion]: ...


class Checker(Protocol):
    async def check(self, program: str, problem: Problem, tests: str) -> Any: ...


@dataclass
class Stats:
    rollouts: int = 0
    nodes: int = 0
    pruned: int = 0
    refined: int = 0
    depth: int = 0
    llm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    executions: int = 0
    repairs: int = 0
    # what shows the tree search happened: rollouts that selected below the root, backups
    # and the most levels one updated, and whether a passing program ended the search early
    selections_below_root: int = 0
    backups: int = 0
    deepest_backup: int = 0
    early_stopped: bool = False
    phase_s: dict[str, float] = field(default_factory=dict)


@dataclass
class TreeResult:
    problem_id: str
    best_program: str
    best_thoughts: list[str]
    best_reward: float
    solved_public: bool
    programs: list[dict[str, Any]]
    prefs: list[dict[str, Any]]
    stats: Stats
    wall_s: float

    def to_row(self) -> dict[str, Any]:
        row = asdict(self)
        row["stats"] = asdict(self.stats)
        return row


class _Phase:
    def __init__(self, stats: Stats, name: str) -> None:
        self.stats, self.name = stats, name

    def __enter__(self) -> None:
        self.t = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        spent = time.perf_counter() - self.t
        self.stats.phase_s[self.name] = self.stats.phase_s.get(self.name, 0.0) + spent


class MCTS:
    def __init__(
        self,
        problem: Problem,
        agents: list[AgentConfig],
        llm: LLM,
        checker: Checker,
        cfg: SearchConfig,
        seed: int = 0,
    ) -> None:
        if not agents:
            raise ValueError("the search needs at least one agent")
        self.problem, self.agents, self.llm, self.checker, self.cfg = (
            problem,
            agents,
            llm,
            checker,
            cfg,
        )
        self.seed = seed
        self.stats = Stats()
        self.root = DecisionNode([])
        self.order = 0
        self.all_programs: list[tuple[Program, ChanceNode]] = []

    # ------------------------------------------------------------------ model calls
    def _sampling(
        self, agent: AgentConfig, key: tuple, greedy: bool = False, sample: bool = False
    ) -> Sampling:
        """A request's settings. Its seed is derived from what the request is (the tree's
        seed, the problem, the node, the agent, the phase), never from the order calls
        happen in: a rerun draws the same, and no two requests of a tree share a seed. The
        backends give each prompt of a request its own draw, so `trials` repeats differ."""
        temperature = 0.0 if greedy else agent.temperature
        if sample and temperature == 0.0:
            temperature = 0.7  # trials must differ
        seed = None
        if temperature > 0.0:
            seed = derive_seed(self.seed, self.problem.id, agent.name, *key)
        return Sampling(
            max_tokens=agent.max_tokens, temperature=temperature, top_p=agent.top_p, seed=seed
        )

    async def _generate(
        self, agent: AgentConfig, prompts: list[Prompt], sampling: Sampling
    ) -> list[Completion]:
        out = await self.llm.generate(agent.name, prompts, sampling)
        self.stats.llm_calls += len(prompts)
        self.stats.prompt_tokens += sum(c.prompt_tokens for c in out)
        self.stats.completion_tokens += sum(c.completion_tokens for c in out)
        return out

    def _new_child(
        self,
        node: DecisionNode,
        thought: str,
        prior: float,
        author: str,
        action: str = "detail",
        replaces: ChanceNode | None = None,
        order: int | None = None,
    ) -> ChanceNode:
        if order is None:
            order = self._reserve(1)[0]
        ch = ChanceNode(thought, prior, author, action, node, order=order, replaces=replaces)  # type: ignore[arg-type]
        ch.child = DecisionNode(ch.thoughts, via=ch)
        node.children.append(ch)
        self.stats.nodes += 1
        self.stats.depth = max(self.stats.depth, len(ch.thoughts))
        return ch

    def _reserve(self, k: int) -> list[int]:
        """The next `k` creation orders. Orders key the seeds and break ties, so children
        created by concurrent calls take theirs before the calls, not as they finish."""
        self.order += k
        return list(range(self.order - k + 1, self.order + 1))

    # ------------------------------------------------------------------ phases
    async def expand(self, node: DecisionNode) -> list[ChanceNode]:
        width = self.cfg.width
        at = node.via.order if node.via is not None else 0

        async def one(agent: AgentConfig) -> list[tuple[str, float]]:
            msgs = expand_messages(self.problem, node.thoughts, width, agent.role_prompt)
            sampling = self._sampling(agent, ("expand", at))
            text = (await self._generate(agent, [msgs], sampling))[0].text
            parsed = parse_thoughts(text, width)
            if parsed is None:  # one repair attempt, then the lines themselves
                self.stats.repairs += 1
                fixed = (
                    await self._generate(
                        agent,
                        [repair_messages(text, width)],
                        self._sampling(agent, ("repair", at), greedy=True),
                    )
                )[0].text
                parsed = parse_thoughts(fixed, width) or fallback_thoughts(text, width)
            return parsed

        proposals = await asyncio.gather(*(one(a) for a in self.agents))
        seen = {c.thought for c in node.children}
        new = []
        for agent, props in zip(self.agents, proposals, strict=True):
            for thought, prior in props:
                if thought in seen:
                    continue
                seen.add(thought)
                new.append(self._new_child(node, thought, prior, agent.name))
        return new

    async def simulate(self, ch: ChanceNode) -> None:
        """Every agent writes `trials` programs from the thoughts; all run on public tests."""
        trials = self.cfg.trials

        async def agent_programs(agent: AgentConfig) -> list[tuple[str, str]]:
            msgs = simulate_messages(self.problem, ch.thoughts, agent.role_prompt)
            sampling = self._sampling(agent, ("simulate", ch.order), sample=True)
            outs = await self._generate(agent, [msgs] * trials, sampling)
            return [(agent.name, program_from_answer(self.problem, o.text)) for o in outs]

        drafts = [
            p
            for group in await asyncio.gather(*(agent_programs(a) for a in self.agents))
            for p in group
        ]
        results = await asyncio.gather(
            *(self.checker.check(code, self.problem, "public") for _, code in drafts)
        )
        self.stats.executions += len(drafts)
        for (author, code), r in zip(drafts, results, strict=True):
            statuses = [t.status for t in r.tests]
            prog = Program(
                code=code,
                author=author,
                pass_rate=r.pass_rate,
                passed=r.passed,
                status=r.status,
                feedback=r.feedback(),
                compiled=any(s not in ("error", "killed") for s in statuses),
            )
            ch.programs.append(prog)
            self.all_programs.append((prog, ch))
        ch.value = node_value(ch.programs, self.cfg.value_mode)

    async def refine(self, node: DecisionNode, new: list[ChanceNode]) -> list[ChanceNode]:
        """Reflect on new children whose best program fails its public tests."""
        budget = self.cfg.max_refines - node.refines
        targets = [c for c in new if c.best_program is not None and not c.best_program.passed][
            : max(budget, 0)
        ]
        if not targets:
            return []
        node.refines += len(targets)
        orders = dict(zip((c.order for c in targets), self._reserve(len(targets)), strict=True))

        async def one(ch: ChanceNode) -> ChanceNode | None:
            best = ch.best_program
            assert best is not None
            # an agent other than the program's author reflects first
            order = [a for a in self.agents if a.name != best.author] + [
                a for a in self.agents if a.name == best.author
            ]
            agent = order[0]
            msgs = reflect_messages(
                self.problem, ch.thoughts, best.code, best.feedback, agent.role_prompt
            )
            sampling = self._sampling(agent, ("reflect", ch.order))
            text = (await self._generate(agent, [msgs], sampling))[0].text
            parsed = parse_thoughts(text, 1) or fallback_thoughts(text, 1)
            if not parsed or parsed[0][0] in {c.thought for c in node.children}:
                return None
            r = self._new_child(
                node, parsed[0][0], 1.0, agent.name, "refine", replaces=ch, order=orders[ch.order]
            )
            await self.simulate(r)
            self.stats.refined += 1
            return r

        return [r for r in await asyncio.gather(*(one(c) for c in targets)) if r is not None]

    # ------------------------------------------------------------------ the search
    def _backup(self, leaf: ChanceNode) -> None:
        with _Phase(self.stats, "backup"):
            backup(leaf, leaf.value or 0.0, self.cfg.gamma)
        self.stats.backups += 1
        self.stats.deepest_backup = max(self.stats.deepest_backup, len(path_to(leaf)))

    def _solved(self) -> bool:
        return any(p.passed for p, _ in self.all_programs)

    async def run(self) -> TreeResult:
        start = time.perf_counter()
        cfg = self.cfg
        for _ in range(cfg.rollouts):
            if cfg.early_stop and self._solved():
                self.stats.early_stopped = True
                break
            self.stats.rollouts += 1
            with _Phase(self.stats, "select"):
                node = self.root
                while node.expanded:
                    ch = select_child(node, cfg.c_base, cfg.c, cfg.q_mode)
                    if ch is None:
                        break
                    node = ch.child  # type: ignore[assignment]
            if node.via is not None:
                self.stats.selections_below_root += 1
            if node.depth >= cfg.max_depth or node.expanded:
                # a leaf at max depth (or with every child pruned): its value counts again
                if node.via is None:
                    break
                self._backup(node.via)
                continue
            with _Phase(self.stats, "expand"):
                new = await self.expand(node)
            if not new:
                if node.via is None:
                    break
                self._backup(node.via)
                continue
            with _Phase(self.stats, "simulate"):
                await asyncio.gather(*(self.simulate(ch) for ch in new))
            # prune first, so no reflection is spent on a child the search then drops; the
            # refine siblings face the same test once simulated
            with _Phase(self.stats, "prune"):
                self.stats.pruned += len(prune_children(node, new, cfg.prune_margin))
            with _Phase(self.stats, "refine"):
                refined = await self.refine(node, [c for c in new if not c.pruned])
            with _Phase(self.stats, "prune"):
                self.stats.pruned += len(prune_children(node, refined, cfg.prune_margin))
            new += refined
            live = [c for c in new if not c.pruned] or new
            best = max(live, key=lambda c: (c.value or 0.0, -c.order))
            for c in new:
                if c is not best:  # evaluated once, not a rollout through the ancestors
                    c.returns.append(c.value or 0.0)
                    c.visits += 1
                    node.visits += 1  # P-UCB's N_parent is the sum of its children's n
            self._backup(best)
        return self._result(time.perf_counter() - start)

    def _result(self, wall: float) -> TreeResult:
        if self.all_programs:
            prog, node = max(
                self.all_programs,
                key=lambda pn: (pn[0].pass_rate, -len(pn[1].thoughts), -pn[1].order),
            )
            best_code, thoughts, reward, solved = (
                prog.code,
                node.thoughts,
                prog.pass_rate,
                prog.passed,
            )
        else:
            best_code, thoughts, reward, solved = "", [], 0.0, False
        programs = [
            {
                "code": p.code,
                "author": p.author,
                "reward": p.pass_rate,
                "status": p.status,
                "depth": len(n.thoughts),
                "node": n.order,
            }
            for p, n in self.all_programs
        ]
        return TreeResult(
            problem_id=self.problem.id,
            best_program=best_code,
            best_thoughts=thoughts,
            best_reward=reward,
            solved_public=solved,
            programs=programs,
            prefs=self._prefs(),
            stats=self.stats,
            wall_s=wall,
        )

    def _prefs(self) -> list[dict[str, Any]]:
        """Better vs worse sibling thought, for every decision node with distinct values."""
        out, stack = [], [self.root]
        while stack:
            node = stack.pop()
            valued = [c for c in node.children if c.value is not None]
            if len(valued) >= 2:
                hi = max(valued, key=lambda c: (c.value, -c.order))
                lo = min(valued, key=lambda c: (c.value, c.order))
                if hi.value > lo.value:  # type: ignore[operator]
                    out.append(
                        {
                            "problem_id": self.problem.id,
                            "thoughts": node.thoughts,
                            "chosen": hi.thought,
                            "rejected": lo.thought,
                            "chosen_value": hi.value,
                            "rejected_value": lo.value,
                        }
                    )
            stack.extend(c.child for c in node.children if c.child is not None)
        return out
