from .loaders import ProblemLoadError, RowError, load_humaneval, load_jsonl, load_problems
from .problems import Problem, TestCase, function_problem, split_check_tests, stdio_problem
from .split import Split, make_split, split_ids

__all__ = [
    "Problem",
    "ProblemLoadError",
    "RowError",
    "Split",
    "TestCase",
    "function_problem",
    "load_humaneval",
    "load_jsonl",
    "load_problems",
    "make_split",
    "split_check_tests",
    "split_ids",
    "stdio_problem",
]
