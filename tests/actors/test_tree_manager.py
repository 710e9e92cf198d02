"""The TreeManager's verdict on a searched problem (its body, without Ray): the best program
is verified on tests the search never saw, and a problem without any is marked so."""

import asyncio

import pytest

from bdc_ray.actors.tree_manager import TreeManager
from bdc_ray.config import AgentConfig, SearchConfig
from bdc_ray.data.problems import function_problem
from tests.boost.scripted import RateChecker, ScriptedLLM

ONE_ASSERT = "def check(candidate):\n    assert candidate() == 1\n"
TWO_ASSERTS = ONE_ASSERT + "    assert candidate() + 1 == 2\n"


class VerifyingChecker(RateChecker):
    """Public checks as the search makes them; records what the verification ran."""

    def __init__(self, hidden_rate: float = 1.0):
        super().__init__()
        self.verified, self.hidden_rate = [], hidden_rate

    async def check(self, program, problem, tests):
        if tests == "public":
            return await super().check(program, problem, tests)
        self.verified.append(list(tests))
        return await super().check(program.replace("rate=1.0", f"rate={self.hidden_rate}"),
                                   problem, "public")  # fmt: skip


def searched(check: str, checker: VerifyingChecker, **search) -> dict:
    problem = function_problem("t/f", "def f():\n    '''one'''\n", "f", check)
    cfg = SearchConfig(width=1, trials=1, rollouts=2, max_refines=0, **search)
    tm = TreeManager([AgentConfig(name="A")], {}, None, cfg)
    tm.llm = ScriptedLLM(expand=lambda a, t: [("return one", 0.9)], code=lambda a, t: 1.0)
    tm.checker = checker
    return asyncio.run(tm._search(problem, "train")), problem


def test_the_best_program_is_verified_on_the_hidden_tests_only():
    checker = VerifyingChecker()
    row, problem = searched(TWO_ASSERTS, checker)
    assert checker.verified == [problem.hidden_tests] and len(problem.hidden_tests) == 1
    assert row["has_hidden"] and row["passed_hidden"] and not row["passed_public_only"]
    assert set(row["examples"]) == {"p2t", "t2c", "p2c"}
    failing = VerifyingChecker(hidden_rate=0.0)
    row, _ = searched(TWO_ASSERTS, failing)
    assert not row["passed_hidden"] and row["examples"] == {}


@pytest.mark.parametrize("keep", [False, True])
def test_a_problem_without_hidden_tests_is_never_verified_on_hidden_tests(keep):
    checker = VerifyingChecker()
    row, problem = searched(ONE_ASSERT, checker, keep_without_hidden=keep)
    assert problem.hidden_tests == [] and checker.verified == [problem.tests]
    assert not row["has_hidden"] and not row["passed_hidden"] and row["passed_public_only"]
    # its examples only when the config asks for them
    assert bool(row["examples"]) is keep
