"""jobs/full.py through every stage on local Ray with the tiny model and a few problems:
zero-shot, search, clustering, experts and merges, the hypernetwork search, evaluation of every
adapter and the customised solver, the report; a rerun redoes nothing."""

import json

import numpy as np
import pyarrow.parquet as pq

from bdc_ray.config import ClusterConfig
from bdc_ray.pipeline import STAGE_NAMES
from bdc_ray.rundir import read_jsonl
from tests.helpers import pipeline
from tests.helpers.pipeline import TINY


def test_every_stage_then_a_rerun_that_skips_them_all(single_node_run):
    run, results, printed = single_node_run.run, single_node_run.results, single_node_run.printed
    args = ["--run-dir", str(run), *TINY]

    # zero-shot and search
    assert {"base_zero_shot", "base_two_stage", "mcts"} <= set(results["methods"])
    assert results["methods"]["mcts"]["n"] == 2 and results["methods"]["base_zero_shot"]["n"] == 3
    assert len(list((run / "traces").glob("*.parquet"))) == 4  # 2 train + 2 test trees
    verified = pipeline.check_sft_against_traces(run)
    assert results["methods"]["mcts"]["train_passed_hidden"] == verified
    # disentangle
    meta = json.loads((run / "clusters" / "meta.json").read_text())
    assert meta["k"] == 2 and sum(meta["sizes"]) == meta["examples"] >= 12
    # every verified train tree gives one example per kind; the reference solutions of the
    # other train problems (12 in all) are the supplement, counted apart in the report
    kinds = len(ClusterConfig().kinds)
    assert meta["by_source"] == {"search": verified * kinds, "reference": 12 - verified}
    assert np.load(run / "clusters" / "centroids.npy").shape == (2, 384)
    assign = pq.read_table(run / "clusters" / "assignments.parquet").to_pylist()
    assert len(assign) == meta["examples"] and {a["cluster"] for a in assign} == {0, 1}
    # experts, merges, customised solver: each evaluated as a method
    methods = [
        "full",
        "cluster_0",
        "cluster_1",
        "merged_linear",
        "merged_ties_svd",
        "merged_dare_svd",
    ]
    for m in [*methods, "customized"]:
        assert results["methods"][m]["n"] == 3, m
        assert len(read_jsonl(run / "eval" / "samples" / f"{m}.jsonl")) == 3
        assert f"{m} pass@1 = " in printed
    for m in methods:
        assert (run / "experts" / m / "adapter_model.safetensors").is_file(), m
    assert results["methods"]["cluster_0"]["adapter"]["examples"] == meta["sizes"][0]
    gates = json.loads((run / "eval" / "gates_customized.json").read_text())
    assert len(gates) == 3
    for g in gates.values():
        assert set(g["gates"]) == {"cluster_0", "cluster_1"} and g["nearest_cluster"] in (0, 1)
    assert (run / "hypernet" / "hypernet.pt").is_file()
    # timings and the report
    timings = json.loads((run / "timings.json").read_text())
    assert list(timings) == list(STAGE_NAMES)
    assert all(t["wall_s"] > 0 and not t["skipped"] for t in timings.values())
    report = (run / "report.md").read_text()
    assert (f"({verified * kinds} from search traces verified on hidden tests, {12 - verified} "
            "from reference solutions)") in report  # fmt: skip
    for m in [*methods, "customized", "mcts", "base_zero_shot"]:
        assert f"| `{m}` |" in report, m
    for section in ("## Methods", "## Wall time per stage", "## Disentangle", "## Experts",
                    "## Customize", "plots/pass_at_1.png", "plots/gates.png", "plots/tune.png"):  # fmt: skip
        assert section in report, section
    for png in ("pass_at_1.png", "gates.png", "clusters.png", "tune.png"):
        assert (run / "plots" / png).stat().st_size > 5000, png
    assert "report: " in printed

    stamps = {
        p: p.stat().st_mtime_ns
        for p in run.rglob("*")
        if p.is_file() and ".ray_train" not in str(p) and ".tune" not in str(p)
    }
    again = pipeline.full(args)
    assert again["methods"] == results["methods"]
    changed = [
        str(p.relative_to(run))
        for p, t in stamps.items()
        if p.stat().st_mtime_ns != t
        and p.name not in ("config.yaml", "timings.json", "report.md")
        and not p.name.endswith(".png")
    ]
    assert changed == []
    rerun = json.loads((run / "timings.json").read_text())
    assert all(t["skipped"] for t in rerun.values()), rerun
    # another evaluation budget and replica count: only the evaluations are redone (the
    # search, the experts and the hypernetwork do not depend on them), and the report keeps
    # the times of the run that did the work
    third_args = [*args, "--set", "eval.max_tokens=6", "--set", "models.smollm2.replicas=2",
                  "--set", "models.smollm2.num_cpus=0.25"]  # fmt: skip
    third_results = pipeline.full(third_args)
    third = json.loads((run / "timings.json").read_text())
    redone = {"zero_shot", "evaluate"}
    assert {k for k, t in third.items() if not t["skipped"]} == redone, third
    assert third_results["methods"]["mcts"] == results["methods"]["mcts"]
    first = {k: v["wall_s"] for k, v in timings.items()}
    assert {k: v["wall_s"] for k, v in rerun.items()} == first
    assert {k: v["wall_s"] for k, v in third.items() if k not in redone} == {
        k: w for k, w in first.items() if k not in redone
    }
