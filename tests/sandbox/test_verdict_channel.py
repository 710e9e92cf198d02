"""The verdict pipe: every test's verdict arrives, however many there are and however much
feedback they carry (more than a pipe holds: the supervisor drains it while the run goes on)."""

from bdc_ray.data import TestCase


def test_many_verdicts_with_long_feedback_all_arrive(sandbox):
    program = "def f(x):\n    return 'y' * 290 + str(x)\n"
    n = 400  # ~700 bytes of verdict per failing test: ~280 kB, four times a pipe's buffer
    tests = [TestCase("assert", code=f"assert candidate({i}) == {i}") for i in range(n)]

    result = sandbox.check_function(program, "f", tests)
    assert len(result.tests) == n
    assert [t.status for t in result.tests] == ["failed"] * n
    assert all("got: 'yyy" in t.feedback for t in result.tests)
    ok = sandbox.check_function("def f(x):\n    return x\n", "f", tests)
    assert ok.passed and ok.pass_rate == 1.0
