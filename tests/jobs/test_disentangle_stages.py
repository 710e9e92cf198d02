"""jobs/full.py's Disentangle and Customize stages end to end on local Ray with the tiny model:
cluster the SFT examples, train experts and merges, tune the hypernetwork, evaluate each adapter
and the customised solver as methods; a rerun redoes nothing."""

import json
import sys

import numpy as np
import pyarrow.parquet as pq

from bdc_ray.rundir import write_jsonl

sys.path.insert(0, "jobs")
import full  # noqa: E402


def test_disentangle_experts_and_evaluation_stages(ray_session, reference_rows, tmp_path, capsys):
    run = tmp_path / "run"
    # SFT files as the Boost stage writes them (here: verified reference answers)
    write_jsonl(run / "sft" / "p2c.jsonl", [{**r, "source": "search"} for r in reference_rows[:12]])
    args = [
        "--run-dir", str(run),
        "--stages", "disentangle", "experts", "hypernet", "evaluate",
        "--set", "models.smollm2.path=tiny-random-llama",
        "--set", "cluster.k=2",
        "--set", "cluster.reference_solutions=false",
        "--set", "experts.max_seq_len=384",
        "--set", "experts.batch_size=4",
        "--set", "data.max_test=3",
        "--set", "eval.max_tokens=8",
        "--set", "hypernet.epochs=1",
        "--set", "hypernet.max_seq_len=384",
        "--set", "hypernet.tune.num_samples=2",
    ]  # fmt: skip
    results = full.main(args)
    printed = capsys.readouterr().out

    meta = json.loads((run / "clusters" / "meta.json").read_text())
    assert meta["k"] == 2 and sum(meta["sizes"]) == meta["examples"] == 12
    assert np.load(run / "clusters" / "centroids.npy").shape == (2, 384)
    assign = pq.read_table(run / "clusters" / "assignments.parquet").to_pylist()
    assert len(assign) == 12 and {a["cluster"] for a in assign} == {0, 1}
    assert (run / "plots" / "clusters.png").stat().st_size > 5000

    methods = ["full", "cluster_0", "cluster_1", "merged_linear", "merged_ties", "merged_dare"]
    for m in [*methods, "customized"]:
        assert results["methods"][m]["n"] == 3, m
        assert len((run / "eval" / "samples" / f"{m}.jsonl").read_text().splitlines()) == 3
        assert f"{m} pass@1 = " in printed
    for m in methods:
        assert (run / "experts" / m / "adapter_model.safetensors").is_file(), m
    assert results["methods"]["cluster_0"]["adapter"]["examples"] == meta["sizes"][0]
    gates = json.loads((run / "eval" / "gates_customized.json").read_text())
    assert len(gates) == 3 and all(set(g) == {"cluster_0", "cluster_1"} for g in gates.values())
    assert (run / "hypernet" / "hypernet.pt").is_file()
    timings = json.loads((run / "timings.json").read_text())
    assert list(timings) == ["disentangle", "experts", "hypernet", "evaluate"]

    stamps = {
        p: p.stat().st_mtime_ns
        for p in run.rglob("*")
        if p.is_file() and ".ray_train" not in str(p)
    }
    again = full.main(args)
    assert again["methods"] == results["methods"]
    changed = [
        str(p.relative_to(run))
        for p, t in stamps.items()
        if p.stat().st_mtime_ns != t and p.name not in ("config.yaml", "timings.json")
    ]
    assert changed == []
