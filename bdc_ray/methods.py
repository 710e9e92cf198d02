"""Every method the comparison reports, named once (docs/method.md#what-is-compared).

A method is either one fixed name (`base_zero_shot`, `mcts`, `customized`, ...) or a family of
names that an earlier stage creates (`cluster_0`, `cluster_1`, ... one per cluster; `merged_ties_svd`
...). The table's order is the report's row order. Adding a method is one row here plus the
function that evaluates its kind in `bdc_ray/pipeline/evaluate.py`. It sits beside the config,
below the stages and the report, since both read it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum


class Kind(StrEnum):
    """How a method produces its answers."""

    DIRECT = "direct"  # one greedy call: problem -> code
    TWO_STAGE = "two_stage"  # problem -> thoughts, then problem + thoughts -> code
    SEARCH = "search"  # MC-Tree-Of-Agents' best program (System 2)
    ADAPTER = "adapter"  # DIRECT with a peft adapter from experts/<name>
    CUSTOMIZED = "customized"  # DIRECT with the hypernetwork-gated mixture of the experts


@dataclass(frozen=True)
class Method:
    name: str  # the method's name, or a family's prefix when `family`
    kind: Kind
    stage: str  # the stage that evaluates it (see bdc_ray/pipeline/stages.py)
    needs: str  # what must exist before it can run
    family: bool = False

    def matches(self, name: str) -> bool:
        if self.family:
            return name.startswith(self.name) and len(name) > len(self.name)
        return name == self.name


METHODS: tuple[Method, ...] = (
    Method("base_zero_shot", Kind.DIRECT, "zero_shot", "the base model"),
    Method("base_two_stage", Kind.TWO_STAGE, "zero_shot", "the base model"),
    Method("mcts", Kind.SEARCH, "explore", "the agents' models and the sandbox"),
    Method("full", Kind.ADAPTER, "evaluate", "experts/full (the adapter on all examples)"),
    Method("cluster_", Kind.ADAPTER, "evaluate", "experts/cluster_<i>", family=True),
    Method(
        "merged_",
        Kind.ADAPTER,
        "evaluate",
        "experts/merged_<linear|ties_svd|dare_svd>",
        family=True,
    ),
    Method("customized", Kind.CUSTOMIZED, "evaluate", "hypernet/ and the cluster experts"),
)


class UnknownMethod(ValueError):
    """A method name no row of METHODS matches."""


def method_of(name: str) -> Method:
    for m in METHODS:
        if m.matches(name):
            return m
    known = ", ".join(m.name + ("<...>" if m.family else "") for m in METHODS)
    raise UnknownMethod(f"unknown method {name!r}; methods: {known}")


def methods_of_stage(stage: str) -> list[str]:
    """The fixed names a stage evaluates (families are found in the run directory)."""
    return [m.name for m in METHODS if m.stage == stage and not m.family]


def method_rank(name: str) -> int:
    """The row of METHODS a name belongs to; a name of no row (a user's own adapter folder)
    sits with the merges."""
    rows = [i for i, m in enumerate(METHODS) if m.matches(name)]
    return rows[0] if rows else next(i for i, m in enumerate(METHODS) if m.name == "merged_")


def _order_key(name: str) -> tuple:
    row = method_rank(name)
    if not METHODS[row].family:
        return (row, 0, "")
    return (row, len(name), name)  # cluster_2 before cluster_10


def ordered_methods(names: Iterable[str]) -> list[str]:
    """Baselines, search, `full`, cluster experts, merges, then the customised solver: the same
    order however the methods were recorded."""
    return sorted(names, key=_order_key)
