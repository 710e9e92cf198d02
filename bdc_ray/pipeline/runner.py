"""Running stages from the table: timings, skip detection, the report and the printed summary.

Ray must already be initialised (the jobs start or join it; a notebook calls `ray.init`)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from typing import Any

from ..config import Config
from ..eval.methods import (
    REFERENCE,
    common_problems_table,
    format_table,
    paired_table,
    with_intervals,
)
from ..eval.report import write_report
from ..rundir import RunDir, atomic_write_text
from . import stages as table

log = logging.getLogger(__name__)


def run_stage(name: str, cfg: Config, run: RunDir) -> dict[str, Any]:
    """Run one stage; returns its timing record ({"wall_s", "skipped"})."""
    st = table.stage(name)
    with run.synced():  # what the stage made reaches run storage, also when it fails
        before = st.stamp(run)
        t0 = time.perf_counter()
        st.run(cfg, run)
        took = round(time.perf_counter() - t0, 1)
        skipped = bool(before) and st.stamp(run) == before
    log.info("stage %s: %.1f s%s", name, took, " (up to date, skipped)" if skipped else "")
    return {"wall_s": took, "skipped": skipped}


def run_pipeline(
    cfg: Config, run: RunDir, stages: Iterable[str] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the chosen stages (default all) in table order, record timings.json and write
    report.md; returns (results.json's content, this run's timings)."""
    names = [s.name for s in table.STAGES]
    wanted = set(stages or names)
    unknown = wanted - set(names)
    if unknown:
        raise KeyError(f"unknown stages {sorted(unknown)}; stages: {', '.join(names)}")
    with run.synced():
        path = run.root / "timings.json"
        previous = json.loads(path.read_text()) if path.is_file() else {}
        timings = {}
        for st in table.STAGES:
            if st.name not in wanted:
                continue
            now = run_stage(st.name, cfg, run)
            old = previous.get(st.name)
            if now["skipped"] and isinstance(old, dict) and "wall_s" in old:
                # keep the time of the run that did the work (through any number of reruns)
                now = {**old, "skipped": True, "check_s": now["wall_s"]}
            timings[st.name] = now
        atomic_write_text(path, json.dumps({**previous, **timings}, indent=1))
        write_report(run)
        return run.load_results(), timings


def summary_text(run: RunDir, timings: dict[str, Any] | None = None) -> str:
    """What `jobs/full.py` prints: the methods table, the table on the problems every method
    ran, one line per method, the stage times and where the results are."""
    results = run.load_results()
    lines = ["", format_table(with_intervals(results))]
    same = common_problems_table(results)
    if same:
        lines += ["", f"the same table on the {len(same[0])} test problems every method ran:"]
        lines.append(same[1])
    versus = paired_table(results)
    if versus:
        lines += ["", f"each method against {REFERENCE} on the problems both ran (a sign test "
                      "p below 0.05 and an interval without 0 mark a difference beyond chance):",
                  versus]  # fmt: skip
    for name, m in results["methods"].items():
        lines.append(f"{name} pass@1 = {m['pass@1']:.3f} on {m['n']} test problems")
    if timings:
        lines.append(
            "stage wall times (s): "
            + ", ".join(
                f"{k} {v['wall_s']}" + (" (skipped now)" if v["skipped"] else "")
                for k, v in timings.items()
            )
        )
    lines.append(f"results: {run.where('eval/results.json')}\nreport: {run.where('report.md')}")
    return "\n".join(lines)
