"""MBPP and APPS rows as their datasets publish them, turned into problems.

Every function problem here gets a HumanEval-shaped prompt, code a program can follow: the
task as a docstring (MBPP: with its first test, as EvalPlus shows it; APPS: inside the starter
code's stub). A model's whole-function answer then redefines the entry point after it, and the
reference solution, appended to the prompt, is a complete program. Errors are
ValueError("field: why"), which the loader reports with file and line.
"""

from __future__ import annotations

import ast
import builtins
import json
import textwrap
from typing import Any

from .problems import Problem, function_problem, parse_python


def _docstring(text: str, indent: str = "") -> str:
    body = text.strip("\n").replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
    return textwrap.indent(f'"""\n{body}\n"""', indent) + "\n"


def _strings(row: dict, name: str, required: bool = True) -> list[str]:
    value = row.get(name)
    if value is None and not required:
        return []
    if isinstance(value, str) and not required:  # MBPP's test_setup_code is one string
        return [value] if value.strip() else []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{name}: must be a list of strings")
    if required and not value:
        raise ValueError(f"{name}: must not be empty")
    return value


def _check_module(preamble: list[str], asserts: list[str]) -> str:
    body = textwrap.indent("\n".join(asserts), "    ")
    return "\n".join([*preamble, "", "", "def check(candidate):", body, ""])


def _called_names(code: str) -> list[str]:
    names = []
    for node in ast.walk(parse_python(code)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            names.append(node.func.id)
    return names


def _mbpp_entry_point(code: str | None, tests: list[str]) -> str:
    """The function the asserts call: one the reference defines, else the first non-builtin."""
    try:
        called = [n for t in tests for n in _called_names(t)]
    except SyntaxError as e:
        raise ValueError(f"test_list: an assert does not parse ({e.msg})") from None
    defined: set[str] = set()
    if code:
        try:
            tree = parse_python(code)
        except SyntaxError as e:
            raise ValueError(f"code: does not parse ({e.msg}, line {e.lineno})") from None
        defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef)}
    for name in called:
        if name in defined or (not defined and not hasattr(builtins, name)):
            return name
    raise ValueError("test_list: no assert calls a function the reference code defines")


def mbpp_problem(row: dict) -> Problem:
    """An MBPP row, original (`text`, `test_setup_code`) or sanitized (`prompt`,
    `test_imports`)."""
    task_id = row.get("task_id")
    if isinstance(task_id, bool) or not isinstance(task_id, int | str) or task_id == "":
        raise ValueError("task_id: must be an integer or a string")
    text = row.get("text", row.get("prompt"))
    if not isinstance(text, str) or not text.strip():
        raise ValueError("text: missing (or prompt, in the sanitized schema)")
    tests = _strings(row, "test_list")
    code = row.get("code")
    if code is not None and not isinstance(code, str):
        raise ValueError("code: must be a string")
    entry = _mbpp_entry_point(code, tests)
    preamble = _strings(row, "test_imports", False) + _strings(row, "test_setup_code", False)
    prompt = _docstring(f"{text.strip()}\n{tests[0]}")
    pid = f"mbpp/{task_id}"
    problem = function_problem(pid, prompt, entry, _check_module(preamble, tests),
                               f"\n{code.strip(chr(10))}\n" if code else None)  # fmt: skip
    problem.meta["source"] = "mbpp"
    return problem


# APPS's call-based harness: a tuple result counts as a list, and an expected value wrapped
# in a one-element list also matches the bare result
_APPS_EQUAL = """\
def _apps_equal(got, want):
    if isinstance(got, tuple):
        got = list(got)
    if got == want:
        return True
    return isinstance(want, list) and len(want) == 1 and got == want[0]"""


def _apps_stub(question: str, starter: str, fn_name: str) -> str:
    """The starter code with the question as the last stub's docstring (a stub a program can
    follow); without starter code, the question as the module's docstring."""
    head = "from typing import *\n\n"
    starter = starter.rstrip()
    if not starter:
        return head + _docstring(question)
    if "class Solution" in starter:
        raise ValueError(
            "starter_code: a LeetCode-style `class Solution` problem; the sandbox calls a "
            "top-level function (fn_name) with plain data, not a method"
        )
    last = starter.splitlines()[-1]
    if not last.rstrip().endswith(":"):
        raise ValueError("starter_code: does not end in a def line")
    indent = last[: len(last) - len(last.lstrip())] + "    "
    prompt = head + starter + "\n" + _docstring(question, indent)
    try:
        tree = parse_python(prompt)
    except SyntaxError as e:
        raise ValueError(f"starter_code: does not parse as a stub ({e.msg})") from None
    if not any(isinstance(n, ast.FunctionDef) and n.name == fn_name for n in tree.body):
        raise ValueError(f"starter_code: defines no top-level function {fn_name!r} (fn_name)")
    return prompt


def apps_solution(row: dict) -> str | None:
    """The first of APPS's `solutions` (a JSON list of programs, or the list itself)."""
    sols = row.get("solutions")
    if isinstance(sols, str):
        try:
            sols = json.loads(sols) if sols.strip() else []
        except json.JSONDecodeError as e:
            raise ValueError(f"solutions: is a string but not JSON ({e.msg})") from None
    if sols is None:
        return None
    if not isinstance(sols, list) or not all(isinstance(s, str) for s in sols):
        raise ValueError("solutions: must be a list of programs")
    return sols[0] if sols else None


def apps_call_problem(pid: str, row: dict, io: dict[str, Any]) -> Problem:
    """A call-based APPS row: each input is the argument list of `fn_name`."""
    fn_name = io["fn_name"]
    if not isinstance(fn_name, str) or not fn_name.isidentifier():
        raise ValueError(f"input_output: fn_name {fn_name!r} is not a Python identifier")
    question = row.get("question", row.get("prompt"))
    if not isinstance(question, str) or not question.strip():
        raise ValueError("question: missing (or prompt)")
    starter = row.get("starter_code") or ""
    if not isinstance(starter, str):
        raise ValueError("starter_code: must be a string")
    ins, outs = io.get("inputs"), io.get("outputs")
    if not isinstance(ins, list) or not isinstance(outs, list) or not ins:
        raise ValueError("input_output: needs non-empty lists 'inputs' and 'outputs'")
    if len(ins) != len(outs):
        raise ValueError(f"input_output: {len(ins)} inputs but {len(outs)} outputs")
    asserts = []
    for i, args in enumerate(ins):
        if not isinstance(args, list):
            raise ValueError(f"input_output: inputs[{i}] is not an argument list")
        asserts.append(f"assert _apps_equal(candidate(*{args!r}), {outs[i]!r})")
    solution = apps_solution(row)
    problem = function_problem(pid, _apps_stub(question, starter, fn_name), fn_name,
                               _check_module([_APPS_EQUAL], asserts),
                               f"\n{solution.strip(chr(10))}\n" if solution else None,
                               source="apps")  # fmt: skip
    problem.meta.update({k: row[k] for k in ("difficulty", "url") if k in row})
    return problem
