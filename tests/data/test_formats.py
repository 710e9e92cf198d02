"""MBPP (original and sanitized) and APPS (call-based and stdio) rows as published: their
example files load, and through the sandbox every reference solution passes every test while
a wrong program fails."""

import json

import pytest

from bdc_ray.data import load_jsonl
from bdc_ray.sandbox import Limits, Sandbox

FILES = {"examples/mbpp.jsonl": 3, "examples/mbpp_sanitized.jsonl": 3, "examples/apps.jsonl": 4}


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(concurrency=2, limits=Limits(test_timeout_s=3.0, total_timeout_s=20.0)) as sb:
        yield sb


def reference(p):
    return p.prompt + p.canonical_solution if p.kind == "function" else p.canonical_solution


def wrong(p):
    if p.kind == "stdio":
        return "print(0)\n"
    return p.prompt + f"\ndef {p.entry_point}(*args):\n    return None\n"


@pytest.mark.parametrize("path", list(FILES))
def test_reference_solutions_pass_at_1_and_wrong_programs_fail(sandbox, path):
    problems, errors = load_jsonl(path)
    assert not errors and len(problems) == FILES[path]
    for p in problems:
        assert p.canonical_solution, p.id
        ok = sandbox.check(reference(p), p)
        assert ok.passed and ok.pass_rate == 1.0, (p.id, ok.feedback())
        bad = sandbox.check(wrong(p), p)
        assert not bad.passed and bad.pass_rate < 1.0, p.id


def test_mbpp_rows_become_function_problems_named_by_the_function_the_asserts_call():
    original, _ = load_jsonl("examples/mbpp.jsonl")
    sanitized, _ = load_jsonl("examples/mbpp_sanitized.jsonl")
    assert [p.entry_point for p in original] == ["sum_of_squares", "is_palindrome",
                                                 "point_distance"]  # fmt: skip
    assert [p.entry_point for p in sanitized] == ["count_vowels", "common_elements", "fib"]
    p = original[2]
    assert p.id == "mbpp/903" and p.test_preamble == "import math"  # test_setup_code
    assert "assert math.isclose(point_distance((0, 0), (3, 4)), 5.0)" in p.prompt
    assert [t.code for t in p.hidden_tests] == ["assert math.isclose(point_distance((-1, 0), (2, 4)), 5.0)"]  # fmt: skip
    assert sanitized[2].test_preamble == "import sys"  # test_imports


def test_apps_call_based_rows_call_fn_name_with_each_argument_list():
    problems, _ = load_jsonl("examples/apps.jsonl")
    call, divmod_, stdio = problems[0], problems[1], problems[2]
    assert call.kind == "function" and call.entry_point == "top_k"
    assert call.tests[0].code == "assert _apps_equal(candidate(*[[3, 1, 4, 1, 5], 2]), [[5, 4]])"
    assert call.prompt.startswith('from typing import *\n\ndef top_k(nums, k):\n    """')
    assert divmod_.tests[0].code.endswith("candidate(*[7, 2]), [3, 1])")  # a tuple is a list
    assert stdio.kind == "stdio" and stdio.tests[0].input == "3\n4 9 2\n"
    assert stdio.canonical_solution.startswith("n = int(input())")


BAD = [
    ({"task_id": 1, "text": "t", "code": "def f(): return 1", "test_list": []}, "test_list"),
    ({"task_id": 1, "text": "t", "code": "def f(): return 1", "test_list": ["assert g() == 1"]},
     "test_list"),
    ({"task_id": 1, "text": "t", "code": "def f(:", "test_list": ["assert f() == 1"]}, "code"),
    ({"problem_id": 1, "question": "q", "starter_code": "class Solution:\n    def f(self):",
      "input_output": {"fn_name": "f", "inputs": [[1]], "outputs": [1]}}, "starter_code"),
    ({"problem_id": 1, "question": "q", "starter_code": "def f(x):",
      "input_output": {"fn_name": "f", "inputs": [1], "outputs": [1]}}, "input_output"),
    ({"problem_id": 1, "question": "q", "solutions": "[not json",
      "input_output": {"inputs": ["1\n"], "outputs": ["1\n"]}}, "solutions"),
]  # fmt: skip


def test_malformed_mbpp_and_apps_rows_name_the_field(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row, _ in BAD))
    problems, errors = load_jsonl(path)
    assert problems == [] and [e.field for e in errors] == [f for _, f in BAD]
    assert "class Solution" in errors[3].message


def test_a_hub_dataset_loads_online_first_then_from_the_cache_and_is_named_when_neither(
    monkeypatch, tmp_path
):
    """`data.source: hub` as MBPP is published there (Parquet under full/), tested on a local
    folder standing in for the hub cache: the online attempt comes first, the cache answers
    when the network does not, and a dataset neither has fails naming it."""
    import huggingface_hub
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bdc_ray.config import DataConfig
    from bdc_ray.data import ProblemLoadError, load_problems

    rows = [json.loads(line) for line in open("examples/mbpp.jsonl")]
    cached = tmp_path / "datasets--org--mbpp"
    (cached / "full").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), cached / "full" / "test-00000-of-00001.parquet")
    calls = []

    def hub(repo_id, local_files_only=False, **kw):
        calls.append((repo_id, local_files_only, kw["repo_type"], kw["allow_patterns"]))
        if not local_files_only:
            raise ConnectionError("no route to huggingface.co")
        if repo_id != "org/mbpp":
            raise FileNotFoundError("not in the cache")
        return str(cached)

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub)
    cfg = DataConfig(source="hub", path="org/mbpp", hub_files="full/test-*.parquet")
    problems = load_problems(cfg)
    assert [p.id for p in problems] == ["mbpp/901", "mbpp/902", "mbpp/903"]
    assert problems[2].test_preamble == "import math"
    assert [c[1] for c in calls] == [False, True]
    assert calls[0][2:] == ("dataset", ["full/test-*.parquet"])
    with pytest.raises(ProblemLoadError, match="dataset 'org/gone' is not on the Hugging Face"):
        load_problems(DataConfig(source="hub", path="org/gone"))
    with pytest.raises(ProblemLoadError, match="no file of dataset 'org/mbpp' matches"):
        load_problems(DataConfig(source="hub", path="org/mbpp", hub_files="*.jsonl"))
