"""95% intervals and the paired comparison the report and the printed table carry."""

import pytest

from bdc_ray.eval.methods import format_table, paired_table, with_intervals
from bdc_ray.eval.stats import bootstrap_mean, ci_text, paired, sign_test, wilson


def test_wilson_interval_against_worked_values():
    lo, hi = wilson(0, 16)
    assert lo == 0.0 and hi == pytest.approx(1.959964**2 / (16 + 1.959964**2))  # 0.194
    assert wilson(8, 16) == pytest.approx((0.2800, 0.7200), abs=1e-4)
    assert wilson(16, 16)[1] == 1.0 and wilson(16, 16)[0] == pytest.approx(0.806, abs=1e-3)
    assert wilson(0, 0) == (0.0, 1.0)


def test_exact_sign_test():
    assert sign_test(5, 0) == pytest.approx(2 / 32)
    assert sign_test(10, 0) == pytest.approx(2 / 1024)
    assert sign_test(3, 3) == 1.0 and sign_test(0, 0) == 1.0
    assert sign_test(1, 6) == pytest.approx(2 * (1 + 7) / 128)


def test_bootstrap_is_seeded_and_brackets_the_mean():
    xs = [0.0, 0.5, 1.0, 0.25, 0.75, 1.0, 0.0, 0.5]
    lo, hi = bootstrap_mean(xs)
    assert lo < sum(xs) / len(xs) < hi and (lo, hi) == bootstrap_mean(xs)
    assert bootstrap_mean([0.3] * 5) == (0.3, 0.3)
    assert ci_text(0.125, [0.03, 0.36]) == "0.125 [0.030, 0.360]" and ci_text(0.5, None) == "0.500"


def _results():
    per = {f"p{i}": {"base_zero_shot": {"passed": i < 2, "pass_rate": 0.5 if i < 2 else 0.0}}
           for i in range(10)}  # fmt: skip
    for i in range(10):  # solves p0-p7: six the reference does not, none it does
        per[f"p{i}"]["full"] = {"passed": i < 8, "pass_rate": 1.0 if i < 8 else 0.2}
    per["p10"] = {"full": {"passed": True, "pass_rate": 1.0}}  # the reference did not run it
    methods = {"base_zero_shot": {"pass@1": 0.2, "pass_rate": 0.1, "n": 10},
               "full": {"pass@1": 9 / 11, "pass_rate": 0.85, "n": 11}}  # fmt: skip
    return {"methods": methods, "problems": per}


def test_paired_comparison_on_the_problems_both_ran():
    c = paired(_results()["problems"], "full", "base_zero_shot")
    assert (c["n"], c["wins"], c["losses"]) == (10, 6, 0)
    assert c["pass@1_diff"] == pytest.approx(0.6) and c["sign_test_p"] == pytest.approx(2 / 64)
    lo, hi = c["pass_rate_diff_ci95"]
    assert 0 < lo < c["pass_rate_diff"] < hi  # a difference beyond chance
    table = paired_table(_results())
    assert table.splitlines()[2].split()[:6] == ["full", "10", "6", "/", "0", "+0.600"]


def test_tables_carry_intervals_recomputed_for_summaries_recorded_without_them():
    methods = with_intervals(_results())
    assert methods["full"]["pass@1_ci95"] == [round(x, 4) for x in wilson(9, 11)]
    text = format_table(methods)
    assert "0.818 [0.523, 0.949]" in text and "pass@1 [95% CI]" in text.splitlines()[0]
