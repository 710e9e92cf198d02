"""The call channel: every test's answer arrives, however many there are and however much they
carry (the run answers every foreseen call at once: more than a socket buffer holds, while the
checker reads them as they come)."""

from bdc_ray.data import TestCase


def test_many_verdicts_with_long_feedback_all_arrive(sandbox):
    program = "def f(x):\n    return 'y' * 290 + str(x)\n"
    n = 400  # ~300 bytes of answer per test: ~120 kB, more than a socket buffer holds
    tests = [TestCase("assert", code=f"assert candidate({i}) == {i}") for i in range(n)]

    result = sandbox.check_function(program, "f", tests)
    assert len(result.tests) == n
    assert [t.status for t in result.tests] == ["failed"] * n
    assert all("got: 'yyy" in t.feedback for t in result.tests)
    ok = sandbox.check_function("def f(x):\n    return x\n", "f", tests)
    assert ok.passed and ok.pass_rate == 1.0
