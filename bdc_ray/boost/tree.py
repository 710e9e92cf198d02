"""The MC-Tree-Of-Agents tree (docs/method.md#boost-mc-tree-of-agents): nodes, P-UCB, backup, prune.

Pure and deterministic: no model, no I/O. A decision node is a state (the problem and the
ordered thoughts so far); its children are chance nodes, each a candidate next thought with a
prior, an author agent, an action (`detail` appends, `refine` replaces the last thought), the
returns backed up through it and its visit count. A chance node leads to exactly one decision
node, whose thoughts it defines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal


@dataclass
class Program:
    code: str
    author: str
    pass_rate: float  # on the public tests
    passed: bool  # every public test
    status: str
    feedback: str = ""
    compiled: bool = True  # False when it could not load or run at all


@dataclass
class ChanceNode:
    thought: str
    prior: float
    author: str
    action: Literal["detail", "refine"]
    parent: DecisionNode
    returns: list[float] = field(default_factory=list)
    visits: int = 0
    pruned: bool = False
    value: float | None = None  # mean (or max) public pass rate of its simulated programs
    programs: list[Program] = field(default_factory=list)
    child: DecisionNode | None = None
    order: int = 0  # creation order in the tree: ties go to the earlier node
    replaces: ChanceNode | None = None  # for `refine`: the sibling whose thought it replaces

    @property
    def n(self) -> int:
        return len(self.returns)

    def q(self, mode: str = "max") -> float:
        if not self.returns:
            return 0.0
        return max(self.returns) if mode == "max" else sum(self.returns) / len(self.returns)

    @property
    def thoughts(self) -> list[str]:
        # `detail` appends to the parent's thoughts; a `refine` sibling replaces the last
        # thought of the sibling it refines, which is the same position
        return [*self.parent.thoughts, self.thought]

    @property
    def best_program(self) -> Program | None:
        return max(self.programs, key=lambda p: p.pass_rate, default=None)


@dataclass
class DecisionNode:
    thoughts: list[str]
    via: ChanceNode | None = None  # the chance node that leads here (None at the root)
    children: list[ChanceNode] = field(default_factory=list)
    visits: int = 0
    refines: int = 0  # refine siblings created among this node's children

    @property
    def depth(self) -> int:
        return len(self.thoughts)

    @property
    def expanded(self) -> bool:
        return bool(self.children)

    def live_children(self) -> list[ChanceNode]:
        return [c for c in self.children if not c.pruned]

    @property
    def value(self) -> float | None:
        return self.via.value if self.via is not None else None


def p_ucb(
    child: ChanceNode, parent_visits: int, c_base: float = 10.0, c: float = 4.0, q_mode: str = "max"
) -> float:
    """score = Q + beta * P * sqrt(ln N) / (1 + n), beta = ln((N + c_base + 1) / c_base) + c."""
    n_parent = max(parent_visits, 1)
    beta = math.log((n_parent + c_base + 1) / c_base) + c
    return child.q(q_mode) + beta * child.prior * math.sqrt(math.log(n_parent)) / (1 + child.n)


def select_child(
    node: DecisionNode, c_base: float = 10.0, c: float = 4.0, q_mode: str = "max"
) -> ChanceNode | None:
    """The live child with the highest P-UCB score (ties: the earlier child)."""
    best, best_score = None, -math.inf
    for ch in node.children:
        if ch.pruned:
            continue
        s = p_ucb(ch, node.visits, c_base, c, q_mode)
        if s > best_score:
            best, best_score = ch, s
    return best


def path_to(node: ChanceNode) -> list[ChanceNode]:
    """Chance nodes from the root down to `node`."""
    path = [node]
    while path[-1].parent.via is not None:
        path.append(path[-1].parent.via)
    return path[::-1]


def backup(leaf: ChanceNode, value: float, gamma: float = 0.9) -> None:
    """G <- r + gamma * G from the leaf up; intermediate nodes carry no reward of their own
    (r = 0), so an ancestor k steps up receives gamma^k * value. Every chance node on the
    path gets the return appended and a visit; every decision node on it a visit."""
    g = value
    node: ChanceNode | None = leaf
    while node is not None:
        node.returns.append(g)
        node.visits += 1
        node.parent.visits += 1
        g = gamma * g
        node = node.parent.via


def prune_children(
    parent: DecisionNode, new: list[ChanceNode], margin: float = 0.0
) -> list[ChanceNode]:
    """Prune new children whose value is below the parent's value minus `margin`, or whose
    programs from every agent failed to compile or run. The last live child is never pruned.
    Returns the children pruned."""
    pruned = []
    ref = parent.value
    for ch in sorted(new, key=lambda c: c.value if c.value is not None else -1.0):
        if ch.pruned:
            continue
        dead = bool(ch.programs) and not any(p.compiled for p in ch.programs)
        worse = ref is not None and ch.value is not None and ch.value < ref - margin
        if (dead or worse) and len(parent.live_children()) > 1:
            ch.pruned = True
            pruned.append(ch)
    return pruned


def node_value(programs: list[Program], mode: str = "mean") -> float:
    if not programs:
        return 0.0
    rates = [p.pass_rate for p in programs]
    return max(rates) if mode == "max" else sum(rates) / len(rates)
