"""Problems, their tests, and the public/hidden split (docs/method.md#problems-and-tests).

Two kinds of problem share one type:
- ``function``: HumanEval style. A prompt (signature + docstring), an entry point, and a test
  module whose ``check(candidate)`` holds asserts. Each top-level statement of ``check`` that
  contains an assert is one test; statements without asserts (setup) run before the tests
  that follow them.
- ``stdio``: APPS/CodeContests style. A statement and (input, output) pairs.

Search sees only the public tests: the first ceil(n/2). Final scores use the complete tests.
"""

from __future__ import annotations

import ast
import math
import re
import textwrap
import threading
from dataclasses import asdict, dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class TestCase:
    """One test. Function tests carry the assert source (and the setup statements of
    ``check`` that precede it); stdio tests carry input and expected output."""

    __test__ = False  # not a pytest class, despite the name

    kind: Literal["assert", "io"]
    code: str = ""
    setup: tuple[str, ...] = ()  # check()'s non-assert statements that precede this test
    input: str = ""
    output: str = ""

    def describe(self) -> str:
        if self.kind == "assert":
            return self.code.strip()
        return f"input={self.input!r} expected={self.output!r}"


@dataclass
class Problem:
    id: str
    prompt: str
    kind: Literal["function", "stdio"]
    tests: list[TestCase]
    entry_point: str | None = None
    test_preamble: str = ""  # test-module code outside check(): imports, helpers, METADATA
    test_code: str | None = None  # the original test module (function problems)
    canonical_solution: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind == "function" and not self.entry_point:
            raise ValueError(f"problem {self.id}: function problems need an entry_point")
        if not self.tests:
            raise ValueError(f"problem {self.id}: no tests")

    @property
    def n_public(self) -> int:
        return math.ceil(len(self.tests) / 2)

    @property
    def public_tests(self) -> list[TestCase]:
        return self.tests[: self.n_public]

    @property
    def hidden_tests(self) -> list[TestCase]:
        return self.tests[self.n_public :]

    def check_code(self, tests: list[TestCase] | None = None) -> str:
        """A HumanEval-style test module holding only `tests` (all when None)."""
        if self.kind != "function":
            raise ValueError(f"problem {self.id}: check_code is for function problems")
        if tests is None and self.test_code is not None:
            return self.test_code
        body: list[str] = []
        for t in self.tests if tests is None else tests:
            body.extend(s for s in t.setup if s not in body)
            body.append(t.code)
        inner = textwrap.indent("\n".join(body) or "pass", "    ")
        return f"{self.test_preamble}\n\ndef check(candidate):\n{inner}\n"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Problem:
        d = dict(d)
        d["tests"] = [TestCase(**{**t, "setup": tuple(t.get("setup", ()))}) for t in d["tests"]]
        return cls(**d)


_DEF = re.compile(r"^[ \t]*(?:async[ \t]+)?def[ \t]+([A-Za-z_]\w*)[ \t]*\(", re.MULTILINE)


def problem_from_tests(
    tests: list[Any],
    entry_point: str | None = None,
    prompt: str = "",
    problem_id: str = "user",
) -> Problem:
    """A problem from user-given tests: a list of assert strings (function tests; they call the
    function by its name or as `candidate`) or a list of {"input", "output"} string objects
    (stdin/stdout tests). For asserts without `entry_point`, the last function `prompt`
    defines is the one under test. Raises ValueError naming what is wrong."""
    if not isinstance(tests, list) or not tests:
        raise ValueError("tests must be a non-empty list of asserts or of {input, output}")
    if all(isinstance(t, str) for t in tests):
        entry_point = entry_point or default_entry_point(prompt)
        if not entry_point:
            raise ValueError("function tests need the function's name (entry_point)")
        # kept as written: the sandbox binds the function's name (guarded) as well as
        # `candidate`; rewriting "name(" also hit longer names and string literals
        cases = [TestCase("assert", code=t) for t in tests]
        return Problem(problem_id, prompt, "function", cases, entry_point=entry_point)
    if all(
        isinstance(t, dict) and isinstance(t.get("input"), str) and isinstance(t.get("output"), str)
        for t in tests
    ):
        cases = [TestCase("io", input=t["input"], output=t["output"]) for t in tests]
        return Problem(problem_id, prompt, "stdio", cases)
    raise ValueError(
        "every test must be an assert string, or every test an {input, output} object of strings"
    )


def default_entry_point(prompt: str) -> str | None:
    """The last function a HumanEval-style prompt defines (helpers come first)."""
    names = _DEF.findall(prompt)
    return names[-1] if names else None


def _contains_assert(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Assert) for n in ast.walk(node))


_PARSE_LOCK = threading.Lock()


def parse_python(code: str) -> ast.Module:
    """`ast.parse`, one thread at a time: CPython 3.11 keeps the AST builder's recursion depth
    per interpreter, not per thread, so two threads parsing at once (methods evaluated side by
    side) can fail with "SystemError: AST constructor recursion depth mismatch" (gh-106905)."""
    with _PARSE_LOCK:
        return ast.parse(code)


def split_check_tests(test_code: str, where: str = "test") -> tuple[str, list[TestCase]]:
    """Split a HumanEval test module into its preamble and one TestCase per assert statement
    of ``check``. Raises ValueError naming the problem when there is no usable check()."""
    try:
        module = parse_python(test_code)
    except SyntaxError as e:
        raise ValueError(f"{where}: test code does not parse: {e.msg} (line {e.lineno})") from e
    lines = test_code.splitlines()
    check = None
    preamble_parts = []
    for node in module.body:
        if isinstance(node, ast.FunctionDef) and node.name == "check":
            check = node
        else:
            preamble_parts.append(ast.get_source_segment(test_code, node) or "")
    if check is None:
        raise ValueError(f"{where}: test code has no `def check(candidate):`")
    if not check.args.args:
        raise ValueError(f"{where}: check() must take the candidate function as its argument")
    arg = check.args.args[0].arg
    tests, setup = [], []
    for stmt in check.body:
        # source with the statement's own relative indentation kept
        seg = "\n".join(lines[stmt.lineno - 1 : stmt.end_lineno])
        seg = textwrap.dedent(seg)
        if arg != "candidate":  # normalise the parameter name used by the statement
            seg = f"{arg} = candidate\n{seg}"
        if _contains_assert(stmt):
            tests.append(TestCase(kind="assert", code=seg, setup=tuple(setup)))
        elif not (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)):
            setup.append(seg)  # docstrings skipped; other statements are setup
    if not tests:
        raise ValueError(f"{where}: check() holds no assert")
    return "\n".join(p for p in preamble_parts if p), tests


def function_problem(
    task_id: str,
    prompt: str,
    entry_point: str,
    test: str,
    canonical_solution: str | None = None,
    **meta: Any,
) -> Problem:
    preamble, tests = split_check_tests(test, where=f"problem {task_id}")
    return Problem(
        id=task_id,
        prompt=prompt,
        kind="function",
        entry_point=entry_point,
        tests=tests,
        test_preamble=preamble,
        test_code=test,
        canonical_solution=canonical_solution,
        meta=meta,
    )


def stdio_problem(
    problem_id: str, prompt: str, cases: list[tuple[str, str]], **meta: Any
) -> Problem:
    return Problem(
        id=problem_id,
        prompt=prompt,
        kind="stdio",
        tests=[TestCase(kind="io", input=i, output=o) for i, o in cases],
        meta=meta,
    )
