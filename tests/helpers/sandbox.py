"""The problem the sandbox suites attack: `add`, two tests, and its right answer."""

from bdc_ray.data.problems import function_problem

ADD = function_problem(
    "hostile/add",
    'def add(a, b):\n    """a + b"""\n',
    "add",
    "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(2, 2) == 4\n",
)
GOOD = ADD.prompt + "    return a + b\n"
