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


MAX_TIMEOUT_S = 3600.0


def _timeout(text: str) -> float:
    """--timeout: finite and in (0, 3600]. -1 made every test of a correct program "time out",
    nan made every run fail to set up: false verdicts, not errors."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (0 < value <= MAX_TIMEOUT_S):  # also false for nan
        raise argparse.ArgumentTypeError(
            f"{text!r}: give seconds per test, more than 0 and at most {MAX_TIMEOUT_S:.0f}"
        )
    return value


def _size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a positive number of bytes")
    return value


def _read(path: Path, what: str, max_bytes: int) -> str:
    """The UTF-8 text of `path`, reading at most `max_bytes` + 1 bytes of it."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(max_bytes + 1)
    except OSError as e:
        _fail(f"cannot read {what} {path}: {e.strerror}")
    if len(raw) > max_bytes:
        _fail(f"{what} {path} is larger than {max_bytes} bytes; raise --max-bytes if it must be")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        _fail(f"{what} {path}, line {line}: not UTF-8 text ({e.reason}); save it as UTF-8")
    raise AssertionError


def _problem_from_tests(path: Path, entry_point: str | None, max_bytes: int) -> Problem:
    text = _read(path, "tests file", max_bytes)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        _fail(f"tests file {path} is not JSON: {e.msg} (line {e.lineno})")
    except RecursionError:
        _fail(f"tests file {path}: JSON nested too deeply")
    if isinstance(data, dict):
        entry_point = data.get("entry_point", entry_point)
        data = data.get("tests")
        if entry_point is not None and not (
            isinstance(entry_point, str) and entry_point.isidentifier()
        ):
            _fail(f"tests file {path}: entry_point must be a function name")
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
    run.add_argument(
        "--timeout", type=_timeout, default=3.0, help="seconds per test, in (0, 3600] (default 3)"
    )
    run.add_argument(
        "--max-bytes",
        type=_size,
        default=2**20,
        help="largest program or tests file accepted, in bytes (default 1 MiB)",
    )
    run.add_argument("--json", action="store_true", help="print the whole result as JSON")
    args = ap.parse_args(argv)

    program = _read(args.program, "program", args.max_bytes)
    if args.problem_id:
        from ..data.loaders import load_humaneval

        problems = {p.id: p for p in load_humaneval()}
        if args.problem_id not in problems:
            _fail(f"unknown problem id {args.problem_id!r} (HumanEval ids look like HumanEval/0)")
        problem = problems[args.problem_id]
    else:
        problem = _problem_from_tests(args.tests, args.entry_point, args.max_bytes)
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
