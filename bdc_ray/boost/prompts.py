"""Prompts of the search (expand, simulate, reflect, repair) and robust parsers.

Expansion asks each agent for `width` next thoughts as JSON, each with a self-rated
"Reasonableness" in [0, 1] used as the prior. Parsing accepts what small models actually write:
code fences, a single object instead of a list, other key spellings, scores out of 10 or 100,
trailing prose. What still does not parse gets one repair call; after that, non-empty lines
become thoughts with prior 1/width.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ..data.problems import Problem
from ..llm.base import Message
from ..llm.prompts import SYSTEM, direct_messages


def _problem_text(problem: Problem) -> str:
    if problem.kind == "function":
        return f"```python\n{problem.prompt}\n```"
    return problem.prompt


def format_thoughts(thoughts: list[str]) -> str:
    return "\n".join(f"{i}. {t}" for i, t in enumerate(thoughts, start=1))


def expand_messages(problem: Problem, thoughts: list[str], width: int, role: str) -> list[Message]:
    so_far = format_thoughts(thoughts) if thoughts else "(none yet)"
    task = (
        f"Problem:\n{_problem_text(problem)}\n\nSolution steps so far:\n{so_far}\n\n"
        f"Propose {width} different next steps towards a correct solution. Each step is one "
        "or two sentences of plain language, not code. Rate how reasonable each step is from "
        "0 to 1. Answer only with JSON, like:\n"
        '[{"thought": "...", "Reasonableness": 0.8}]'
    )
    return [{"role": "system", "content": role}, {"role": "user", "content": task}]


def simulate_messages(problem: Problem, thoughts: list[str], role: str = SYSTEM) -> list[Message]:
    """Thoughts -> code (the t2c prompt; also the training prompt for t2c examples)."""
    if not thoughts:
        return direct_messages(problem, role)
    base = direct_messages(problem, role)
    base[-1]["content"] += "\n\nFollow these steps:\n" + format_thoughts(thoughts)
    return base


def reflect_messages(
    problem: Problem, thoughts: list[str], program: str, feedback: str, role: str
) -> list[Message]:
    task = (
        f"Problem:\n{_problem_text(problem)}\n\nSolution steps:\n{format_thoughts(thoughts)}\n\n"
        f"A program written from these steps:\n```python\n{program}\n```\n\n"
        f"It fails these tests:\n{feedback}\n\n"
        "Reflect on what went wrong and write a better replacement for the LAST step. Answer "
        'only with JSON: {"thought": "...", "Reasonableness": 0.9}'
    )
    return [{"role": "system", "content": role}, {"role": "user", "content": task}]


def repair_messages(answer: str, width: int) -> list[Message]:
    return [
        {"role": "system", "content": "You convert text to JSON."},
        {
            "role": "user",
            "content": (
                f"Rewrite the following as a JSON list of at most {width} objects with keys "
                '"thought" (string) and "Reasonableness" (number from 0 to 1). Answer only '
                f"with the JSON.\n\n{answer}"
            ),
        },
    ]


def p2t_messages(problem: Problem) -> list[Message]:
    """Problem -> thoughts: the training prompt of p2t examples."""
    return [
        {"role": "system", "content": SYSTEM},
        {
            "role": "user",
            "content": f"Problem:\n{_problem_text(problem)}\n\nWrite numbered solution steps "
            "in plain language, not code.",
        },
    ]


_THOUGHT_KEYS = ("thought", "Thought", "step", "Step", "content", "idea", "text")
_SCORE_KEYS = ("Reasonableness", "reasonableness", "score", "Score", "confidence", "prior")


def _candidates(text: str) -> list[str]:
    out = [m.group(1) for m in re.finditer(r"```(?:json)?\s*\n?(.*?)```", text, re.DOTALL)]
    for open_, close in (("[", "]"), ("{", "}")):
        i, j = text.find(open_), text.rfind(close)
        if 0 <= i < j:
            out.append(text[i : j + 1])
    out.append(text)
    return out


def _score(value: Any) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    if x != x or x < 0:  # NaN or negative
        return None
    if x > 1:  # "8" out of 10, "80" out of 100
        x = x / 10 if x <= 10 else x / 100
    return min(x, 1.0)


def parse_thoughts(text: str, width: int) -> list[tuple[str, float]] | None:
    """[(thought, prior)] from a model's answer, or None when nothing parses."""
    for cand in _candidates(text):
        try:
            data = json.loads(cand)
        except (json.JSONDecodeError, ValueError):
            continue
        if isinstance(data, dict):
            data = next((v for v in data.values() if isinstance(v, list)), [data])
        if not isinstance(data, list):
            continue
        out = []
        for item in data:
            if isinstance(item, str) and item.strip():
                out.append((item.strip(), 1.0 / width))
                continue
            if not isinstance(item, dict):
                continue
            thought = next((item[k] for k in _THOUGHT_KEYS if isinstance(item.get(k), str)), None)
            if not thought or not thought.strip():
                continue
            score = next((s for k in _SCORE_KEYS if (s := _score(item.get(k))) is not None), None)
            out.append((thought.strip(), 1.0 / width if score is None else score))
        if out:
            return out[:width]
    return None


def fallback_thoughts(text: str, width: int) -> list[tuple[str, float]]:
    """After a failed repair: non-empty lines (list markers stripped), prior 1/width."""
    lines = [re.sub(r"^\s*(?:[-*]|\d+[.)])\s*", "", ln).strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if len(ln) > 3 and not ln.startswith(("```", "{", "[", "]", "}"))]
    return [(ln, 1.0 / width) for ln in lines[:width]]
