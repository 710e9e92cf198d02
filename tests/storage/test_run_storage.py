"""Run storage on an S3-compatible server (moto, on 127.0.0.1) and on an fsspec filesystem:
two node-local copies of one run stay alike through pull and push, an upload that fails leaves
no object, a pipeline run in s3:// is picked up from another node's empty cache, and a bad URI
is one line."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from bdc_ray import storage as storage_mod
from bdc_ray.config import Config
from bdc_ray.pipeline import run_pipeline
from bdc_ray.pipeline import stages as stages_mod
from bdc_ray.rundir import RunDir, RunDirError, check_run_dir
from bdc_ray.storage import RunStorage


def objects(uri: str) -> dict[str, bytes]:
    """Every object under `uri`, hidden ones included, with its content."""
    fs, base = pafs.FileSystem.from_uri(uri)
    out = {}
    for info in fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True)):
        if info.type == pafs.FileType.File:
            with fs.open_input_stream(info.path) as f:
                out[info.path[len(base) + 1 :]] = f.read()
    return out


def test_two_node_copies_of_one_run_stay_alike(s3, tmp_path):
    a = RunStorage("s3://bdc/alike", cache=tmp_path / "node-a")
    b = RunStorage("s3://bdc/alike", cache=tmp_path / "node-b")
    (a.local / "traces").mkdir(parents=True)
    (a.local / "traces" / "p1.parquet").write_bytes(b"\x00trace" * 1000)
    (a.local / "config.yaml").write_text("seed: 0\n")
    (a.local / ".half.tmp").write_text("never copied")
    (a.local / "experts" / ".ray_train").mkdir(parents=True)
    (a.local / "experts" / ".ray_train" / "ckpt").write_text("Ray Train's own")
    assert a.push() == 2 and a.push() == 0  # unchanged files are not sent again
    assert set(objects("s3://bdc/alike")) == {"traces/p1.parquet", "config.yaml"}

    assert b.pull() == 2 and b.pull() == 0
    assert (b.local / "traces" / "p1.parquet").read_bytes() == b"\x00trace" * 1000
    assert not (b.local / ".half.tmp").exists()

    (b.local / "config.yaml").write_text("seed: 1\n")  # a change on one node...
    (b.local / "traces" / "p1.parquet").unlink()  # ...and a removal
    assert b.push() == 1
    assert set(objects("s3://bdc/alike")) == {"config.yaml"}
    assert a.pull() == 1  # ...reach the other
    assert (a.local / "config.yaml").read_text() == "seed: 1\n"
    assert not (a.local / "traces" / "p1.parquet").exists()


def test_a_replacement_of_the_same_size_in_the_same_second_is_fetched(s3, tmp_path):
    """Object stores keep whole seconds: the new version has the old one's size and time."""
    a = RunStorage("s3://bdc/second", cache=tmp_path / "a")
    b = RunStorage("s3://bdc/second", cache=tmp_path / "b")
    a.local.mkdir(parents=True)
    for attempt in range(20):  # until both writes fall in one second of the store's clock
        (a.local / "v.txt").write_text(f"a{attempt:02d}")
        a.push()
        b.pull()
        (b.local / "v.txt").write_text(f"b{attempt:02d}")
        b.push()
        if a._manifest()["v.txt"][2:4] == b._manifest()["v.txt"][2:4]:
            break
    else:
        pytest.skip("no two writes fell in one second")
    assert a.pull() == 1 and (a.local / "v.txt").read_text() == f"b{attempt:02d}"
    mtime = (a.local / "v.txt").stat().st_mtime_ns
    assert a.pull() == 0 or (a.local / "v.txt").stat().st_mtime_ns == mtime  # same bytes: kept


def test_a_file_changed_here_is_not_lost_when_the_store_removes_it(s3, tmp_path):
    a = RunStorage("s3://bdc/keep", cache=tmp_path / "a")
    b = RunStorage("s3://bdc/keep", cache=tmp_path / "b")
    a.local.mkdir(parents=True)
    (a.local / "x.json").write_text("1")
    a.push()
    b.pull()
    (b.local / "x.json").write_text("22")  # changed on b while a removes it
    (a.local / "x.json").unlink()
    a.push()
    b.pull()
    assert (b.local / "x.json").read_text() == "22"
    b.push()
    assert objects("s3://bdc/keep") == {"x.json": b"22"}


def test_an_upload_that_fails_half_way_leaves_no_object(s3, tmp_path, monkeypatch):
    st = RunStorage("s3://bdc/half", cache=tmp_path / "n")
    st.local.mkdir(parents=True)
    (st.local / "big.bin").write_bytes(b"x" * 5000)

    def failing(path):
        yield b"x" * 100
        raise OSError("the connection dropped")

    monkeypatch.setattr(storage_mod, "_chunks", failing)
    with pytest.raises(OSError, match="connection dropped"):
        st.push()
    assert objects("s3://bdc/half") == {}  # neither the object nor a temporary part
    monkeypatch.undo()
    assert st.push() == 1  # not recorded as sent: the next push sends it
    assert objects("s3://bdc/half") == {"big.bin": b"x" * 5000}


def test_any_fsspec_filesystem_carries_a_run(tmp_path):
    a = RunStorage("memory://bdc-test/run", cache=tmp_path / "a")
    b = RunStorage("memory://bdc-test/run", cache=tmp_path / "b")
    assert isinstance(a.fs, pafs.PyFileSystem)
    (a.local / "eval").mkdir(parents=True)
    (a.local / "eval" / "results.json").write_text("{}")
    assert a.push() == 1 and b.pull() == 1
    assert (b.local / "eval" / "results.json").read_text() == "{}"


def test_a_local_or_shared_folder_is_used_in_place(tmp_path):
    st = RunStorage(tmp_path / "run")
    assert not st.remote and st.local == tmp_path / "run"
    assert st.pull() == 0 and st.push() == 0
    path, fs = st.ray_storage("experts/.ray_train")
    assert fs is None and path == str((tmp_path / "run" / "experts" / ".ray_train").resolve())
    assert RunStorage(f"file://{tmp_path}/run").local == tmp_path / "run"


def test_bad_run_uris_are_one_line_errors(s3):
    with pytest.raises(RunDirError, match="no filesystem for it"):
        check_run_dir("nosuch://bucket/run")
    with pytest.raises(RunDirError, match="cannot be written.*not found"):
        check_run_dir("s3://no-such-bucket/run")
    with pytest.raises(RunDirError, match="name a folder in the bucket"):
        RunDir("s3://bdc")
    unreachable = "s3://bdc/run?endpoint_override=127.0.0.1:9&scheme=http"  # nothing listens
    with pytest.raises(RunDirError, match=r"s3://bdc/run\?endpoint.*cannot be.*reached"):
        check_run_dir(unreachable)
    assert check_run_dir("s3://bdc/fine") == "s3://bdc/fine"
    assert objects("s3://bdc/fine") == {}  # the write probe is gone


def test_refused_credentials_fail_before_anything_runs_naming_the_store(tmp_path):
    """A server that checks keys (and knows none): the run dir check names the URI, that the
    credentials were refused, and where they come from."""
    from tests.helpers.s3 import s3_server

    with s3_server(buckets=("locked",), check_keys=True):
        with pytest.raises(RunDirError, match=r"s3://locked/run cannot be written.*credentials"):
            check_run_dir("s3://locked/run")


def write_marker(cfg: Config, run: RunDir) -> dict:
    """A stage of the test's own: writes one file unless it exists for this seed."""
    path = run.root / "marker" / "out.json"
    if path.is_file() and json.loads(path.read_text())["seed"] == cfg.seed:
        return {}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"seed": cfg.seed}))
    if cfg.seed == 13:
        raise RuntimeError("the stage died after writing")
    return {}


def check_marker_stored(cfg: Config, run: RunDir) -> dict:
    """A second stage: the first one's output is in the store before it starts (each stage's
    work is pushed when it ends, not only when the pipeline does)."""
    assert "marker/out.json" in objects(f"{run.uri}"), "the first stage was not pushed"
    return {}


def test_a_pipeline_in_s3_is_picked_up_from_another_nodes_empty_cache(s3, tmp_path, monkeypatch):
    marker = stages_mod.Stage(
        "marker", f"{__name__}:write_marker", ("marker/*.json",), ("seed",), "jobs/none.py", "x"
    )
    check = stages_mod.Stage("check", f"{__name__}:check_marker_stored", (), (), "x", "x")
    monkeypatch.setattr(stages_mod, "STAGES", (marker, check))
    monkeypatch.setenv("BDC_RAY_CACHE", str(tmp_path / "head"))
    _, first = run_pipeline(Config(), RunDir("s3://bdc/pipe"))
    assert not first["marker"]["skipped"]
    stored = objects("s3://bdc/pipe")
    assert json.loads(stored["marker/out.json"]) == {"seed": 0}
    assert {"timings.json", "report.md"} <= set(stored)

    monkeypatch.setenv("BDC_RAY_CACHE", str(tmp_path / "other-node"))
    _, again = run_pipeline(Config(), RunDir("s3://bdc/pipe"))
    assert again["marker"]["skipped"]  # the outputs came from the store, not redone

    with pytest.raises(RuntimeError, match="died after writing"):
        run_pipeline(Config(seed=13), RunDir("s3://bdc/pipe"))
    assert json.loads(objects("s3://bdc/pipe")["marker/out.json"]) == {"seed": 13}  # not lost


def test_tune_checkpoints_go_into_run_storage(s3, tmp_path, ray_session):
    from ray import tune

    def trainable(config):
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            with open(f"{d}/state.json", "w") as fh:
                fh.write(json.dumps(config))
            tune.report({"loss": config["x"]}, checkpoint=tune.Checkpoint.from_directory(d))

    run = RunDir("s3://bdc/tuned")
    path, fs = run.storage.ray_storage("hypernet/.tune")
    assert fs is not None
    results = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        param_space={"x": tune.grid_search([1, 2])},
        run_config=tune.RunConfig(name="t", storage_path=path, storage_filesystem=fs, verbose=0),
    ).fit()
    assert not results.errors
    stored = objects("s3://bdc/tuned")
    assert sum(k.endswith("state.json") for k in stored) == 2, sorted(stored)
    best = results.get_best_result(metric="loss", mode="min")
    with best.checkpoint.as_directory() as d:
        assert json.loads(open(f"{d}/state.json").read()) == {"x": 1}
    assert run.storage.pull() == 0  # Ray's own folder is not copied into the node's copy


def test_the_tree_manager_writes_each_trace_into_run_storage_itself(s3, tmp_path, monkeypatch):
    """Whichever node the TreeManager is on: the trace is an object of the store, not a file in
    the driver's copy (a file on the TreeManager's node would be lost with that node)."""
    import io

    import pyarrow.parquet as pq

    from bdc_ray.actors.tree_manager import TreeManager

    monkeypatch.setenv("BDC_RAY_CACHE", str(tmp_path / "cache"))
    row = {"problem_id": "HumanEval/0", "error": "", "best_program": "x = 1",
           "best_thoughts": "t", "best_reward": 1.0, "solved_public": True,
           "has_hidden": True, "passed_hidden": True, "passed_public_only": False,
           "wall_s": 0.5, "stats": {}, "programs": [], "prefs": [],
           "examples": {}, "fingerprint": "fp"}  # fmt: skip
    TreeManager._write(row, "s3://bdc/tm", "train")
    stored = objects("s3://bdc/tm")
    assert list(stored) == ["traces/train--HumanEval_0.parquet"]
    back = pq.read_table(io.BytesIO(stored["traces/train--HumanEval_0.parquet"])).to_pylist()
    assert back[0]["best_program"] == "x = 1" and back[0]["split"] == "train"
    assert not (RunDir("s3://bdc/tm").root / "traces").exists()  # nothing went through a copy
    TreeManager._write(row, str(tmp_path / "local-run"), "test")  # a folder: written in place
    assert (tmp_path / "local-run" / "traces" / "test--HumanEval_0.parquet").is_file()


def test_a_tune_trial_fetches_the_experts_from_run_storage_on_its_node(s3, tmp_path, monkeypatch):
    """The driver's paths of the adapters mean nothing on another node: a trial fetches each
    expert's folder from the store into its node's cache and resolves the base model there."""
    from bdc_ray.config import HypernetConfig
    from bdc_ray.customize.tune import TrialData

    monkeypatch.setenv("BDC_RAY_CACHE", str(tmp_path / "driver"))
    driver = RunDir("s3://bdc/trial")
    for name in ("cluster_0", "cluster_1"):
        (driver.root / "experts" / name).mkdir(parents=True)
        (driver.root / "experts" / name / "adapter_config.json").write_text(f'{{"n": "{name}"}}')
    (driver.root / "eval").mkdir()
    (driver.root / "eval" / "results.json").write_text("{}")
    driver.storage.push()
    data = TrialData(
        examples=[], features=None, groups=[], base_model_spec="tiny-random-llama", encoder="x", settings=HypernetConfig(),
        experts={n: str(driver.root / "experts" / n) for n in ("cluster_0", "cluster_1")},
        storage=driver.storage.spec,
    )  # fmt: skip
    monkeypatch.setenv("BDC_RAY_CACHE", str(tmp_path / "trial-node"))
    base, experts = data.on_this_node()
    assert (Path(base) / "config.json").is_file() and "/driver/" not in base
    for name, folder in experts.items():
        assert folder.startswith(str(tmp_path / "trial-node"))
        assert json.loads((Path(folder) / "adapter_config.json").read_text()) == {"n": name}
    trial_copy = RunDir("s3://bdc/trial").root
    assert not (trial_copy / "eval").exists()  # only the experts' folders were fetched
    # a run on a shared folder: the experts are read there, the model is still this node's
    shared = replace(data, storage="", experts={"cluster_0": "/shared/run/experts/cluster_0"})
    monkeypatch.setenv("BDC_RAY_CACHE", str(tmp_path / "another-node"))
    base, experts = shared.on_this_node()
    assert (
        base.startswith(str(tmp_path / "another-node")) and (Path(base) / "config.json").is_file()
    )
    assert experts == {"cluster_0": "/shared/run/experts/cluster_0"}


def test_an_evaluation_task_or_replica_fetches_only_the_solver_from_run_storage(
    s3, tmp_path, monkeypatch
):
    from bdc_ray.config import ServeConfig
    from bdc_ray.customize.solver import solver_folder
    from bdc_ray.serve.app import build_app

    monkeypatch.setenv("BDC_RAY_CACHE", str(tmp_path / "driver"))
    with pytest.raises(FileNotFoundError, match="s3://bdc/solver: no trained hypernetwork"):
        build_app("s3://bdc/solver", ServeConfig())
    driver = RunDir("s3://bdc/solver")
    files = {"hypernet/hypernet.json": '{"experts": ["cluster_0"]}', "hypernet/hypernet.pt": "w",
             "experts/cluster_0/adapter_config.json": "{}", "experts/cluster_1/x": "not gated",
             "clusters/centroids.npy": "c", "clusters/examples.jsonl": "", "eval/results.json": "{}"}  # fmt: skip
    for rel, text in files.items():
        (driver.root / rel).parent.mkdir(parents=True, exist_ok=True)
        (driver.root / rel).write_text(text)
    driver.storage.push()
    monkeypatch.setenv("BDC_RAY_CACHE", str(tmp_path / "replica-node"))
    folder = solver_folder("s3://bdc/solver")
    got = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert [g for g in got if not g.startswith(".")] == [
        "clusters/centroids.npy", "experts/cluster_0/adapter_config.json",
        "hypernet/hypernet.json", "hypernet/hypernet.pt",
    ]  # fmt: skip
    assert solver_folder(str(tmp_path)) == tmp_path  # a folder is used as it is


def test_a_replica_fetches_an_adapter_given_as_a_store_uri_on_its_node(s3, tmp_path, monkeypatch):
    """Per-adapter evaluation hands replicas the adapter's URI, not the driver's folder: the
    backend's resolve_adapter fetches exactly that folder into its own node's cache."""
    from bdc_ray.llm.models import resolve_adapter

    made = tmp_path / "made" / "cluster_0"
    made.mkdir(parents=True)
    (made / "adapter_config.json").write_text('{"r": 8}')
    (made / "adapter_model.safetensors").write_bytes(b"\x01" * 4096)
    RunStorage("s3://bdc/adapters").put_dir("experts/cluster_0", made)
    RunStorage("s3://bdc/adapters").write_bytes("experts/cluster_1/adapter_config.json", b"{}")
    monkeypatch.setenv("BDC_RAY_CACHE", str(tmp_path / "replica-node"))
    got = resolve_adapter("s3://bdc/adapters/experts/cluster_0")
    assert got.is_relative_to(tmp_path / "replica-node")
    assert sorted(p.name for p in got.iterdir() if not p.name.startswith(".")) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    assert (got / "adapter_model.safetensors").read_bytes() == b"\x01" * 4096
    assert resolve_adapter(str(made)) == made  # a folder is used as it is
