"""jobs/train_experts.py on local Ray: concurrent Ray Train trainers with DeepSpeed, merges,
skipping on rerun, and resuming from a checkpoint after a worker is killed."""

import json
import os
import signal
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from safetensors.torch import load_file

from bdc_ray.config import Config
from bdc_ray.pipeline.experts import train_experts
from bdc_ray.pipeline.stages import StageInputError
from bdc_ray.rundir import RunDir, write_jsonl


def make_run(root: Path, rows: list[dict], clusters: list[int]) -> RunDir:
    run = RunDir(root)
    write_jsonl(root / "clusters" / "examples.jsonl", rows)
    pq.write_table(
        pa.table({"id": [r["id"] for r in rows], "cluster": clusters}),
        root / "clusters" / "assignments.parquet",
    )
    return run


def config(**experts) -> Config:
    return Config.model_validate(
        {
            "models": {"tiny": {"path": "tiny-random-llama"}},
            "base_model": "tiny",
            "agents": [{"name": "a", "model": "tiny"}],
            "experts": {"lr": 1e-2, "batch_size": 2, "max_seq_len": 512, **experts},
        }
    )


def test_experts_train_in_parallel_merge_and_skip_on_rerun(ray_session, reference_rows, tmp_path):
    rows = reference_rows[:8]
    run = make_run(tmp_path, rows, [0, 1, 0, 1, 0, 1, 0, 1])
    cfg = config(epochs=1, checkpoint_every=1, max_concurrent=3)
    summary = train_experts(cfg, run)
    assert set(summary["experts"]) == {"full", "cluster_0", "cluster_1"}
    assert (
        summary["experts"]["full"]["steps"] == 4 and summary["experts"]["cluster_0"]["steps"] == 2
    )
    for name in ("full", "cluster_0", "cluster_1"):
        log = json.loads((tmp_path / "experts" / name / "train_log.json").read_text())
        n = 8 if name == "full" else 4
        assert log["examples"] == log["used_examples"] == n and log["zero_stage"] == 2
        assert log["tokens_per_s"] > 0 and len(log["history"]["loss"]) == log["steps"]
    # side by side: every pair of trainers overlapped in time
    logs = [json.loads((tmp_path / "experts" / n / "train_log.json").read_text())
            for n in ("full", "cluster_0", "cluster_1")]  # fmt: skip
    spans = [(log["started_at"], log["finished_at"]) for log in logs]
    assert max(s for s, _ in spans) < min(e for _, e in spans), spans
    # every trainer's checkpoints are gone once its adapter is written
    assert not list((tmp_path / "experts" / ".ray_train").glob("*/checkpoint_*"))

    # merges: the linear merge's delta is (alpha/r) * mean(B) @ mean(A) in every module
    a = load_file(tmp_path / "experts" / "cluster_0" / "adapter_model.safetensors")
    b = load_file(tmp_path / "experts" / "cluster_1" / "adapter_model.safetensors")
    m = load_file(tmp_path / "experts" / "merged_linear" / "adapter_model.safetensors")
    mcfg = json.loads((tmp_path / "experts" / "merged_linear" / "adapter_config.json").read_text())
    assert set(m) == set(a) and mcfg["r"] == 8
    scale_m, scale = mcfg["lora_alpha"] / mcfg["r"], cfg.experts.alpha / cfg.experts.r
    for key in (k for k in a if "lora_A" in k):
        kb = key.replace("lora_A", "lora_B")
        want = scale * ((b[kb] + a[kb]) / 2) @ ((a[key] + b[key]) / 2)
        assert (scale_m * m[kb] @ m[key] - want).abs().max() < 1e-6, key
    for kind in ("ties_svd", "dare_svd"):
        rec = json.loads((tmp_path / "experts" / f"merged_{kind}" / "merge.json").read_text())
        assert rec["experts"] == ["cluster_0", "cluster_1"] and rec["density"] == 0.5
        assert rec["acts_on"] == "weight deltas" and rec["svd_rank"] == cfg.experts.r

    stamps = {
        p: p.stat().st_mtime_ns for p in (tmp_path / "experts").glob("*/adapter_model.safetensors")
    }
    again = train_experts(cfg, run)  # same examples, same config: nothing is retrained
    assert again["experts"] == summary["experts"]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def _train_workers() -> list:
    import psutil

    return [
        p
        for p in psutil.process_iter(["cmdline"])
        if any("RayTrainWorker" in part for part in (p.info["cmdline"] or []))
    ]


def _registered_checkpoint(storage: Path) -> bool:
    """Ray Train has recorded a checkpoint (a folder on disk may not be registered yet)."""
    for snap in storage.glob("cluster_0-*/checkpoint_manager_snapshot.json"):
        try:
            if json.loads(snap.read_text()).get("latest_checkpoint_result"):
                return True
        except (OSError, ValueError):
            pass  # being rewritten
    return False


def test_killed_worker_resumes_from_its_last_checkpoint(ray_session, reference_rows, tmp_path):
    rows = reference_rows[:16]
    run = make_run(tmp_path, rows, [0] * 16)
    cfg = config(epochs=2, checkpoint_every=2, full=False, merges=[], max_failures=2)
    result, errors = {}, []

    def work():
        try:
            result.update(train_experts(cfg, run))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    t = threading.Thread(target=work)
    t.start()
    storage = tmp_path / "experts" / ".ray_train"
    deadline = time.monotonic() + 300
    while not _registered_checkpoint(storage) and time.monotonic() < deadline:
        assert t.is_alive(), errors
        time.sleep(0.05)
    victims = _train_workers()
    assert victims, "no Ray Train worker process found"
    for p in victims:
        os.kill(p.pid, signal.SIGKILL)
    t.join(timeout=600)
    assert not t.is_alive() and not errors, errors
    log = json.loads((tmp_path / "experts" / "cluster_0" / "train_log.json").read_text())
    assert log["steps"] == 16
    assert log["resumed_from"] and log["resumed_from"][0] > 0, log["resumed_from"]
    assert len(log["history"]["loss"]) == 16  # the resumed run carries the earlier steps' log
    assert result["experts"]["cluster_0"]["resumed_from"] == log["resumed_from"]


def test_missing_clusters_fail_with_a_clear_message(tmp_path):
    with pytest.raises(StageInputError, match="run jobs/disentangle.py first"):
        train_experts(config(), RunDir(tmp_path))


def test_an_expert_of_a_run_in_s3_is_uploaded_by_its_trainer(
    ray_session, s3, reference_rows, tmp_path, monkeypatch
):
    """Run storage in a bucket: the trainer resolves the model on its own node, checkpoints
    into the bucket and uploads the adapter there (train_log.json last); the driver's copy gets
    it from the bucket, and the finished trainer's checkpoints are removed from it."""
    from tests.storage.test_run_storage import objects

    monkeypatch.setenv("BDC_RAY_CACHE", str(tmp_path / "driver"))
    rows = reference_rows[:4]
    run = make_run(RunDir("s3://bdc/experts").root, rows, [0, 0, 0, 0])
    run = RunDir("s3://bdc/experts")
    run.storage.push()
    summary = train_experts(config(epochs=1, merges=[]), run, ["full"])
    assert summary["experts"]["full"]["steps"] == 2
    stored = objects("s3://bdc/experts")
    assert {"experts/full/adapter_model.safetensors", "experts/full/train_log.json"} <= set(stored)
    assert not [k for k in stored if k.startswith("experts/.ray_train/")]
    log = json.loads(stored["experts/full/train_log.json"])
    assert log == json.loads((run.root / "experts" / "full" / "train_log.json").read_text())
