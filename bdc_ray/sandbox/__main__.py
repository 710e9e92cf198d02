"""Command line: run one program against a problem's tests in the sandbox.

    python -m bdc_ray.sandbox run --program prog.py --problem-id HumanEval/0 --json
    python -m bdc_ray.sandbox run --program prog.py --tests tests.json [--entry-point f] --json

A tests file is JSON, either a list of assert statements (function tests; the function is
`candidate` in them, or call it by name) or a list of {"input": ..., "output": ...} objects
(stdin/stdout tests); the object form {"entry_point": "f", "tests": [...]} names the function.
Prints one JSON object: passed, pass_rate, status, tests (per-test status and feedback).
Exit code: 0 when every test passed, 1 when not, 2 for bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..data.problems import Problem, problem_from_tests
from .supervisor import Limits, Sandbox


def _fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def _problem_from_tests(path: Path, entry_point: str | None) -> Problem:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        _fail(f"tests file {path} does not exist")
    except json.JSONDecodeError as e:
        _fail(f"tests file {path} is not JSON: {e.msg} (line {e.lineno})")
    if isinstance(data, dict):
        entry_point = data.get("entry_point", entry_point)
        data = data.get("tests")
    if isinstance(data, list) and data and all(isinstance(t, str) for t in data):
        if not entry_point:
            _fail("function tests need the function's name: --entry-point NAME")
    try:
        return problem_from_tests(data, entry_point, problem_id="cli")
    except ValueError as e:
        _fail(f"tests file {path}: {e}")
    raise AssertionError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bdc_ray.sandbox", description=__doc__.splitlines()[0]
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run a program against tests")
    run.add_argument("--program", required=True, type=Path)
    src = run.add_mutually_exclusive_group(required=True)
    src.add_argument("--problem-id", help="a HumanEval task id, e.g. HumanEval/0")
    src.add_argument("--tests", type=Path, help="JSON file of tests (see --help)")
    run.add_argument("--entry-point")
    run.add_argument("--which", choices=["all", "public", "hidden"], default="all")
    run.add_argument("--timeout", type=float, default=3.0, help="seconds per test")
    run.add_argument("--json", action="store_true", help="print the whole result as JSON")
    args = ap.parse_args(argv)

    try:
        program = args.program.read_text()
    except OSError as e:
        _fail(f"cannot read program {args.program}: {e.strerror}")
    if args.problem_id:
        from ..data.loaders import load_humaneval

        problems = {p.id: p for p in load_humaneval()}
        if args.problem_id not in problems:
            _fail(f"unknown problem id {args.problem_id!r} (HumanEval ids look like HumanEval/0)")
        problem = problems[args.problem_id]
    else:
        problem = _problem_from_tests(args.tests, args.entry_point)
    limits = Limits(test_timeout_s=args.timeout, total_timeout_s=max(10.0, args.timeout * 4))
    with Sandbox(concurrency=1, limits=limits) as sb:
        result = sb.check(program, problem, tests=args.which)
        out = result.to_dict()
        out["isolation"] = sb.isolation
    if args.json:
        print(json.dumps(out))
    else:
        print(
            f"{result.status}: {sum(t.passed for t in result.tests)}/{len(result.tests)} tests passed"
        )
        if not result.passed:
            print(result.feedback())
    return 0 if result.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
