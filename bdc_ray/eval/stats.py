"""How much a pass@1 or a pass rate on a few problems can be trusted, and whether two methods
differ on the problems both ran.

- pass@1 (a share of problems solved): the Wilson score interval, right even at 0 or n of n.
- pass rate (a mean of per-problem fractions): a percentile bootstrap over problems.
- a method against a reference on the same problems: the exact two-sided sign test on the
  problems one solves and the other does not (McNemar's exact test), and a paired bootstrap
  interval of the difference in pass rate.

Seeded, so a report is the same every time it is written.
"""

from __future__ import annotations

import math
import random
from typing import Any

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile
BOOTSTRAP = 2000  # resamples: the interval's ends move by well under 0.01 beyond this


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson interval of a proportion k / n."""
    if n <= 0:
        return (0.0, 1.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def _percentiles(values: list[float]) -> tuple[float, float]:
    values = sorted(values)
    lo = values[int(0.025 * (len(values) - 1))]
    hi = values[int(math.ceil(0.975 * (len(values) - 1)))]
    return (lo, hi)


def bootstrap_mean(
    xs: list[float], seed: int = 0, resamples: int = BOOTSTRAP
) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the mean of `xs` (problems resampled)."""
    if not xs:
        return (0.0, 1.0)
    rng, n = random.Random(seed), len(xs)
    means = [sum(xs[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples)]
    return _percentiles(means)


def sign_test(wins: int, losses: int) -> float:
    """Exact two-sided p of `wins` against `losses` under no difference (ties left out)."""
    m = wins + losses
    if m == 0:
        return 1.0
    tail = sum(math.comb(m, i) for i in range(min(wins, losses) + 1)) / 2**m
    return min(1.0, 2 * tail)


def paired(
    per_problem: dict[str, dict[str, Any]], method: str, reference: str, seed: int = 0
) -> dict[str, Any] | None:
    """`method` against `reference` on the problems both ran (None when there are none)."""
    common = sorted(p for p, row in per_problem.items() if method in row and reference in row)
    if not common:
        return None
    a = [per_problem[p][method] for p in common]
    b = [per_problem[p][reference] for p in common]
    wins = sum(x["passed"] and not y["passed"] for x, y in zip(a, b, strict=True))
    losses = sum(y["passed"] and not x["passed"] for x, y in zip(a, b, strict=True))
    diffs = [x["pass_rate"] - y["pass_rate"] for x, y in zip(a, b, strict=True)]
    n = len(common)
    return {
        "n": n,
        "wins": wins,
        "losses": losses,
        "pass@1_diff": (sum(x["passed"] for x in a) - sum(y["passed"] for y in b)) / n,
        "sign_test_p": sign_test(wins, losses),
        "pass_rate_diff": sum(diffs) / n,
        "pass_rate_diff_ci95": bootstrap_mean(diffs, seed),
    }


def intervals(scores: list[tuple[bool, float]], seed: int = 0) -> dict[str, list[float]]:
    """The summary's intervals from (passed, pass_rate) per problem."""
    n = len(scores)
    k = sum(bool(s[0]) for s in scores)
    return {
        "pass@1_ci95": [round(x, 4) for x in wilson(k, n)],
        "pass_rate_ci95": [round(x, 4) for x in bootstrap_mean([s[1] for s in scores], seed)],
    }


def ci_text(value: float, ci: Any) -> str:
    """`0.125 [0.035, 0.360]`, or the value alone when no interval was recorded."""
    if not (isinstance(ci, list | tuple) and len(ci) == 2):
        return f"{value:.3f}"
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"
