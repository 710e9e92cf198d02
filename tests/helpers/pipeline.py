"""The jobs' command lines, run in the test's own process (its Ray session) through the library:
`--run-dir`, `--stages` and `--set` as `jobs/*.py` take them, on configs/local.yaml."""

from __future__ import annotations

import argparse
from pathlib import Path

from bdc_ray.config import Config, load_config, save_config
from bdc_ray.pipeline import run_pipeline, summary_text
from bdc_ray.rundir import RunDir

LOCAL = Path(__file__).resolve().parents[2] / "configs" / "local.yaml"


def parse(argv: list[str]) -> tuple[Config, RunDir, list[str] | None]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--stages", nargs="+")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args(argv)
    cfg = load_config(LOCAL, args.overrides)
    run = RunDir(args.run_dir)
    save_config(cfg, run.config)
    run.storage.push()
    return cfg, run, args.stages


def full(argv: list[str]) -> dict:
    """What `jobs/full.py` does and prints; returns results.json's content."""
    cfg, run, stages = parse(argv)
    results, timings = run_pipeline(cfg, run, stages)
    print(summary_text(run, timings))
    return results


def explore(argv: list[str]) -> dict:
    """What `jobs/explore.py` does; returns the explore summary."""
    from bdc_ray.pipeline.explore import explore as explore_stage

    cfg, run, _ = parse(argv)
    with run.synced():
        return explore_stage(cfg, run)
