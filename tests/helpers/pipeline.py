"""The jobs' command lines, run in the test's own process (its Ray session) through the library:
`--run-dir`, `--stages` and `--set` as `jobs/*.py` take them, on configs/local.yaml."""

from __future__ import annotations

import argparse
from pathlib import Path

from bdc_ray.config import Config, load_config, save_config
from bdc_ray.pipeline import run_pipeline, summary_text
from bdc_ray.rundir import RunDir

LOCAL = Path(__file__).resolve().parents[2] / "configs" / "local.yaml"

# every stage of configs/local.yaml at the smallest size that still exercises it, with the
# tiny random model
TINY = [
    "--set", "models.smollm2.path=tiny-random-llama",
    "--set", "data.max_train=12",
    "--set", "data.max_test=3",
    "--set", "search.train_limit=2",
    "--set", "search.test_limit=2",
    "--set", "search.rollouts=1",
    "--set", "agents.0.max_tokens=16",
    "--set", "agents.1.max_tokens=16",
    "--set", "eval.max_tokens=8",
    "--set", "eval.thought_tokens=8",
    "--set", "eval.timeout_s=1.0",
    # the tiny model verifies nothing: train on the train split's reference solutions
    "--set", "cluster.reference_solutions=true",
    "--set", "cluster.k=2",
    "--set", "experts.max_seq_len=384",
    "--set", "experts.batch_size=4",
    "--set", "hypernet.epochs=1",
    "--set", "hypernet.max_seq_len=384",
    "--set", "hypernet.tune.num_samples=2",
]  # fmt: skip


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


def check_sft_against_traces(run: Path) -> int:
    """The SFT files hold one example of each kind per train trace that passed its hidden
    tests, and every preference pair of the train traces; returns how many passed."""
    import json

    import pyarrow.parquet as pq

    from bdc_ray.rundir import read_jsonl

    rows = [pq.read_table(p).to_pylist()[0] for p in (run / "traces").glob("train--*.parquet")]
    verified = {r["problem_id"] for r in rows if r["passed_hidden"]}
    for kind in ("p2t", "t2c", "p2c"):
        sft = read_jsonl(run / "sft" / f"{kind}.jsonl")
        assert sorted(ex["problem_id"] for ex in sft) == sorted(verified), kind
        assert all(ex["kind"] == kind for ex in sft), kind
    prefs = sum(len(json.loads(r["prefs"])) for r in rows)
    assert len(read_jsonl(run / "sft" / "prefs.jsonl")) == prefs
    return len(verified)
