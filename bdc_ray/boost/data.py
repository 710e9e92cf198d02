"""Training examples from search results (docs/method.md#boost-mc-tree-of-agents, training data).

Only problems whose best program also passes the *hidden* tests give examples:
`p2t` (problem -> thoughts), `t2c` (problem + thoughts -> code), `p2c` (problem -> code). The
prompts are the ones inference uses (one chat template everywhere).
"""

from __future__ import annotations

from typing import Any

from ..data.problems import Problem
from ..llm.prompts import direct_messages
from .prompts import format_thoughts, p2t_messages, simulate_messages

KINDS = ("p2t", "t2c", "p2c")


def solution_code(problem: Problem, program: str) -> str:
    """The answer part of a program: for function problems, without the prompt's stub."""
    if problem.kind == "function" and program.startswith(problem.prompt):
        return program[len(problem.prompt) :].strip("\n")
    return program.strip("\n")


def training_examples(
    problem: Problem, thoughts: list[str], program: str
) -> dict[str, dict[str, Any]]:
    code = f"```python\n{solution_code(problem, program)}\n```"
    return {
        "p2t": {
            "id": f"{problem.id}/p2t",
            "problem_id": problem.id,
            "kind": "p2t",
            "messages": p2t_messages(problem),
            "response": format_thoughts(thoughts),
        },
        "t2c": {
            "id": f"{problem.id}/t2c",
            "problem_id": problem.id,
            "kind": "t2c",
            "messages": simulate_messages(problem, thoughts),
            "response": code,
        },
        "p2c": {
            "id": f"{problem.id}/p2c",
            "problem_id": problem.id,
            "kind": "p2c",
            "messages": direct_messages(problem),
            "response": code,
        },
    }
