"""Worker nodes of the three-node test cluster killed (raylet, object store and every process
on them at once) under a running stage, with run storage in the S3 test server: explore
finishes on the surviving node without searching any problem twice, and expert training
resumes from its last checkpoint in the bucket."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scripts.local_cluster import LocalCluster, _free_port
from tests.helpers.pipeline import TINY

pytestmark = pytest.mark.cluster
ROOT = Path(__file__).resolve().parents[2]


def _bucket(name: str, versioned: bool = False) -> None:
    import boto3

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=name)
    if versioned:  # every write of a key is kept: a trace written twice shows as two versions
        s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})


def _versions(bucket: str, prefix: str) -> dict[str, int]:
    """Versions written of each trace (uploads' temporary dot-names and folder markers left
    out)."""
    import boto3

    pages = boto3.client("s3").get_paginator("list_object_versions")
    counts: dict[str, int] = {}
    for page in pages.paginate(Bucket=bucket, Prefix=prefix):
        for v in page.get("Versions", []):
            if v["Key"].endswith(".parquet") and not v["Key"].rsplit("/", 1)[1].startswith("."):
                counts[v["Key"]] = counts.get(v["Key"], 0) + 1
    return counts


def _cluster(s3: dict) -> LocalCluster:
    from bdc_ray.disentangle.train import prepare_torch_extensions
    from bdc_ray.llm.models import ensure_tiny, models_dir

    # the models and DeepSpeed's JIT-built op shared by the nodes, as a node image would have
    # them (tests/jobs/test_cluster_pipeline.py has each node convert its own); call this
    # before pointing BDC_RAY_CACHE into /tmp, which is private to each node
    ensure_tiny()
    env = {**s3, "TORCH_EXTENSIONS_DIR": str(prepare_torch_extensions()),
           "BDC_RAY_MODELS": str(models_dir())}  # fmt: skip
    return LocalCluster(workers=2, cpus_per_worker=2, head_cpus=1, env=env, dashboard=True)


def _job(c: LocalCluster, tmp_path: Path, *args: str) -> subprocess.Popen:
    env = {**c.env, "RAY_ADDRESS": c.address, "BDC_RAY_CACHE": str(tmp_path / "driver")}
    return subprocess.Popen(
        [sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def _kill_when(c: LocalCluster, job: subprocess.Popen, ready, role: str, timeout: float = 600):
    """Once `ready()` holds, kill the worker node `role` runs on; returns that node."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert job.poll() is None, job.stdout.read()[-5000:]
        assert time.monotonic() < deadline, f"{role}: never ready to kill"
        time.sleep(0.2)
    nodes = c.nodes_of(role) - {"head"}
    assert len(nodes) == 1, f"{role} runs on {nodes}"
    (victim,) = nodes
    c.kill_worker(victim)
    return victim


def test_explore_survives_the_death_of_the_search_node_and_searches_nothing_twice(s3, tmp_path):
    _bucket("bdc-explore-death", versioned=True)
    uri = "s3://bdc-explore-death/run"
    args = [*TINY, "--set", "search.train_limit=4", "--set", "data.max_train=8",
            "--set", "search.rollouts=2", "--set", "search.concurrent_trees=1",
            "--set", "agents.0.max_tokens=32", "--set", "agents.1.max_tokens=32",
            "--set", "models.smollm2.resources={worker: 1}",
            "--set", "search.manager_resources={worker: 1}",
            "--set", "eval.executor_resources={worker: 1}",
            "--set", "eval.executor_pools=2", "--set", "eval.executor_cpus=0.5"]  # fmt: skip
    with _cluster(s3) as c:
        job = _job(c, tmp_path, "jobs/explore.py", "--run-dir", uri, *args)
        try:

            def some_written() -> bool:
                return len(_versions("bdc-explore-death", "run/traces/")) >= 1

            victim = _kill_when(c, job, some_written, "TreeManager")
            before = _versions("bdc-explore-death", "run/traces/")
            out, _ = job.communicate(timeout=900)
        finally:
            if job.poll() is None:
                job.kill()
        assert job.returncode == 0, out[-5000:]
        survivors = c.nodes_of("TreeManager", alive_only=False) - {victim}
    written = _versions("bdc-explore-death", "run/traces/")
    assert len(written) == 6, written  # 4 train + 2 test problems, each with its trace
    assert 1 <= len(before) < 6  # the node died with the search under way...
    assert set(written.values()) == {1}, written  # ...and no problem was searched twice
    assert survivors, "the search did not go on on another node"


@pytest.mark.long  # the mechanism is tested on one node too (tests/disentangle)
def test_expert_training_resumes_from_its_checkpoint_in_the_bucket_after_its_node_dies(
    s3, reference_rows, tmp_path, monkeypatch
):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bdc_ray.config import Config, save_config
    from bdc_ray.rundir import RunDir, write_jsonl

    cluster = _cluster(s3)
    monkeypatch.setenv("BDC_RAY_CACHE", str(tmp_path / "maker"))
    uri = "s3://bdc/train-death"
    run = RunDir(uri)
    rows = reference_rows[:8]
    write_jsonl(run.root / "clusters" / "examples.jsonl", rows)
    table = pa.table({"id": [r["id"] for r in rows], "cluster": [0] * len(rows)})
    pq.write_table(table, run.root / "clusters" / "assignments.parquet")
    run.storage.push()
    cfg = Config.model_validate({
        "models": {"tiny": {"path": "tiny-random-llama"}}, "base_model": "tiny",
        "agents": [{"name": "a", "model": "tiny"}],
        "experts": {"lr": 1e-2, "batch_size": 2, "max_seq_len": 512, "epochs": 3,
                    "checkpoint_every": 2, "full": False, "merges": [], "max_failures": 2,
                    "resources_per_worker": {"worker": 1}},
    })  # fmt: skip
    save_config(cfg, tmp_path / "experts.yaml")

    def checkpointed() -> bool:
        """Ray Train has registered a checkpoint in the bucket (an uploaded folder may not be
        registered yet)."""
        import boto3

        client = boto3.client("s3")
        listed = client.list_objects_v2(Bucket="bdc", Prefix="train-death/experts/.ray_train/")
        for o in listed.get("Contents", []):
            if o["Key"].endswith("/checkpoint_manager_snapshot.json"):
                body = client.get_object(Bucket="bdc", Key=o["Key"])["Body"].read()
                try:
                    if json.loads(body).get("latest_checkpoint_result"):
                        return True
                except ValueError:
                    pass
        return False

    with cluster as c:
        job = _job(c, tmp_path, "jobs/train_experts.py", "--config", str(tmp_path / "experts.yaml"),
                   "--run-dir", uri)  # fmt: skip
        try:
            victim = _kill_when(c, job, checkpointed, "RayTrainWorker")
            out, _ = job.communicate(timeout=900)
        finally:
            if job.poll() is None:
                job.kill()
        assert job.returncode == 0, out[-5000:]
        resumed_on = c.nodes_of("RayTrainWorker", alive_only=False) - {victim, "head"}
    run.storage.pull()
    log = json.loads((run.root / "experts" / "cluster_0" / "train_log.json").read_text())
    assert log["steps"] == 12
    assert log["resumed_from"] and log["resumed_from"][0] > 0, log["resumed_from"]
    assert len(log["history"]["loss"]) == 12  # the resumed run carries the earlier steps' log
    assert resumed_on, "training did not resume on the other node"


@pytest.mark.long  # a replica replaced on one node is tested too (tests/serve)
def test_serve_keeps_answering_when_the_node_of_one_of_two_replicas_dies(
    single_node_run, s3, tmp_path, monkeypatch
):
    """A closed-loop client (two requests in flight at all times) against the customised
    solver served from the bucket with two replicas on two worker nodes; one replica's node is
    killed. Only requests in flight on that replica may fail; every later one is answered."""
    import shutil
    import threading
    import urllib.error
    import urllib.request

    from bdc_ray.storage import RunStorage

    cluster = _cluster(s3)
    monkeypatch.setenv("BDC_RAY_CACHE", str(tmp_path / "maker"))
    uri = "s3://bdc/serve-death"
    st = RunStorage(uri)
    shutil.copytree(single_node_run.run, st.local, dirs_exist_ok=True)
    st.push()
    port = _free_port()
    replica = "ServeReplica:bdc:SolverServer"
    with cluster as c:
        job = _job(c, tmp_path, "jobs/serve.py", "--run-dir", uri, *TINY,
                   "--set", "serve.min_replicas=2", "--set", "serve.max_replicas=2",
                   "--set", "serve.resources={worker: 1}", "--set", f"serve.port={port}",
                   "--set", "serve.proxy_location=HeadOnly")  # fmt: skip
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        body = json.dumps({"model": "bdc-customized", "max_tokens": 4,
                           "messages": [{"role": "user", "content": "Add two numbers."}]})  # fmt: skip
        log: list[tuple[float, bool, str]] = []
        stop = threading.Event()

        def client() -> None:
            while not stop.is_set():
                req = urllib.request.Request(url, body.encode(), method="POST",
                                             headers={"Content-Type": "application/json"})  # fmt: skip
                try:
                    with urllib.request.urlopen(req, timeout=60) as r:
                        ok = r.status == 200 and bool(json.loads(r.read())["choices"])
                        log.append((time.monotonic(), ok, ""))
                except (urllib.error.URLError, OSError, ValueError) as e:
                    log.append((time.monotonic(), False, repr(e)[:200]))
                    time.sleep(0.1)

        try:
            deadline = time.monotonic() + 600
            while len(c.nodes_of(replica) - {"head"}) < 2:
                assert job.poll() is None, job.stdout.read()[-5000:]
                assert time.monotonic() < deadline, "two replicas never ran"
                time.sleep(1)
            threads = [threading.Thread(target=client) for _ in range(2)]
            for t in threads:
                t.start()
            while sum(ok for _, ok, _ in log) < 10:  # answering from both replicas
                assert time.monotonic() < deadline, log[-5:]
                time.sleep(0.2)
            victim = sorted(c.nodes_of(replica) - {"head"})[0]
            c.kill_worker(victim)
            killed_at = time.monotonic()
            while time.monotonic() < killed_at + 30:
                time.sleep(0.5)
            stop.set()
            for t in threads:
                t.join(timeout=90)
        finally:
            stop.set()
            job.kill()
            job.wait()
    before = [ok for at, ok, _ in log if at < killed_at]
    after = [(ok, why) for at, ok, why in log if at >= killed_at]
    errors = [why for ok, why in after if not ok]
    print(f"serve failover: {len(before)} answered before the kill, {len(after)} after, "
          f"{len(errors)} failed: {errors}")  # fmt: skip
    assert all(before), [w for _, ok, w in log if not ok]
    # at most the requests in flight on the dead replica (one per client) fail
    assert len(errors) <= 2, errors
    assert sum(ok for ok, _ in after) >= 20 and after[-1][0], after[-5:]
