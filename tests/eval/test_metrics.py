from itertools import combinations

import pytest

from bdc_ray.eval import mean_pass_at_k, pass_at_k, pass_rate


@pytest.mark.parametrize(
    "n,c,k", [(5, 0, 1), (5, 2, 1), (5, 2, 2), (6, 3, 4), (10, 9, 3), (4, 4, 2)]
)
def test_pass_at_k_matches_enumeration(n, c, k):
    samples = [True] * c + [False] * (n - c)
    subsets = list(combinations(samples, k))
    expected = sum(any(s) for s in subsets) / len(subsets)
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_1_is_fraction_correct_and_bad_input_is_refused():
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert mean_pass_at_k([(2, 1), (2, 2)], 1) == pytest.approx(0.75)
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)


def test_pass_rate():
    assert pass_rate([True, False, True, True]) == 0.75
    assert pass_rate([]) == 0.0


def test_common_problems_table_recomputes_on_the_shared_problems():
    from bdc_ray.eval.methods import common_problems_table

    results = {
        "methods": {"a": {"pass@1": 0.5, "n": 4}, "mcts": {"pass@1": 1.0, "n": 2}},
        "problems": {
            "p1": {
                "a": {"passed": True, "pass_rate": 1.0},
                "mcts": {"passed": True, "pass_rate": 1.0},
            },
            "p2": {
                "a": {"passed": False, "pass_rate": 0.5},
                "mcts": {"passed": True, "pass_rate": 1.0},
            },
            "p3": {"a": {"passed": True, "pass_rate": 1.0}},
            "p4": {"a": {"passed": False, "pass_rate": 0.0}},
        },
    }
    common, table = common_problems_table(results)
    assert common == ["p1", "p2"]
    lines = table.splitlines()
    # pipeline order (search before adapters), whatever order the methods were recorded in
    # each with its interval on those 2 problems: Wilson, and the bootstrap of the pass rates
    assert lines[2].split()[:6] == ["mcts", "1.000", "[0.342,", "1.000]", "1.000", "[1.000,"]
    assert lines[3].split()[0:2] == ["a", "0.500"] and lines[3].split()[4:6] == ["0.750", "[0.500,"]
    assert lines[3].split()[-1] == "2"
    del results["methods"]["mcts"]
    assert common_problems_table(results) is None
