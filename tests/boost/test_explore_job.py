"""jobs/explore.py end to end on local Ray with the tiny model."""

import json
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq
import ray

from bdc_ray.rundir import read_jsonl
from tests.helpers import pipeline

TINY = [
    "--set",
    "models.smollm2.path=tiny-random-llama",
    "--set",
    "data.max_train=3",
    "--set",
    "data.max_test=2",
    "--set",
    "search.rollouts=2",
    "--set",
    "search.width=2",
    "--set",
    "search.trials=1",
    "--set",
    "search.max_refines=1",
    "--set",
    "agents.0.max_tokens=24",
    "--set",
    "agents.1.max_tokens=24",
    "--set",
    "eval.timeout_s=1.0",
]


def traces(run):
    return {
        p.name: pq.read_table(p).to_pylist()[0] for p in sorted((run / "traces").glob("*.parquet"))
    }


def test_explore_writes_traces_and_sft_files_that_load_back_and_resumes(ray_session, tmp_path):
    run = tmp_path / "run"
    summary = pipeline.explore(["--run-dir", str(run), *TINY])
    rows = traces(run)
    assert len(rows) == 5 and sum(n.startswith("train--") for n in rows) == 3
    for row in rows.values():
        assert row["error"] == ""
        stats = json.loads(row["stats"])
        assert stats["rollouts"] >= 1 and stats["llm_calls"] > 0 and stats["executions"] > 0
        assert json.loads(row["programs"])  # every evaluated program with its reward
    pipeline.check_sft_against_traces(run)
    results = json.loads((run / "eval" / "results.json").read_text())
    assert results["methods"]["mcts"]["n"] == 2 and "nodes" in results["methods"]["mcts"]
    # two rollouts a tree: every tree's second one selects below the root and backs up
    for split, trees in (("train", 3), ("test", 2)):
        counts = results["methods"]["mcts"]["search"][split]
        assert counts["trees"] == trees and counts["selections_below_root"] >= trees, counts
        assert counts["backups"] >= 2 * trees and counts["deepest_backup"] >= 2, counts
    assert summary["progress"]["done"] == 5
    # a rerun finds every problem done: nothing is searched again, no trace is rewritten
    mtimes = {n: (run / "traces" / n).stat().st_mtime_ns for n in rows}
    again = pipeline.explore(["--run-dir", str(run), *TINY])
    assert again["progress"]["done"] == 0 and again["progress"]["llm_calls"] == 0
    assert {n: (run / "traces" / n).stat().st_mtime_ns for n in rows} == mtimes


def test_explore_into_s3_writes_traces_from_the_tree_manager_and_resumes_elsewhere(
    ray_session, s3, tmp_path, monkeypatch
):
    from tests.storage.test_run_storage import objects

    monkeypatch.setenv("BDC_RAY_CACHE", str(tmp_path / "driver-a"))
    first = pipeline.explore(["--run-dir", "s3://bdc/explore", *TINY])
    stored = objects("s3://bdc/explore")
    names = [k for k in stored if k.startswith("traces/")]
    assert len(names) == 5 and first["progress"]["done"] == 5
    assert {f"sft/{k}.jsonl" for k in ("p2t", "t2c", "p2c", "prefs")} <= set(stored)
    assert "eval/results.json" in stored
    # another driver with an empty cache (another machine) finds every problem done
    monkeypatch.setenv("BDC_RAY_CACHE", str(tmp_path / "driver-b"))
    again = pipeline.explore(["--run-dir", "s3://bdc/explore", *TINY])
    assert again["progress"]["done"] == 0 and again["progress"]["llm_calls"] == 0
    assert {k: v for k, v in objects("s3://bdc/explore").items() if k in names} == {
        k: stored[k] for k in names
    }


def test_an_interrupted_run_finishes_only_the_rest(ray_session, tmp_path):
    run = tmp_path / "run"
    pipeline.explore(["--run-dir", str(run), *TINY])
    victim, failed = sorted((run / "traces").glob("train--*.parquet"))[:2]
    victim.unlink()  # as if the job died before this problem finished
    row = pq.read_table(failed).to_pylist()[0]  # and as if this tree had raised
    pq.write_table(pa.Table.from_pylist([{**row, "error": "RuntimeError: boom"}]), failed)
    kept = {p.name: p.stat().st_mtime_ns for p in (run / "traces").glob("*.parquet") if p != failed}
    again = pipeline.explore(["--run-dir", str(run), *TINY])
    assert again["progress"]["done"] == 2 and victim.exists()
    assert pq.read_table(failed).to_pylist()[0]["error"] == ""
    assert {
        p.name: p.stat().st_mtime_ns for p in (run / "traces").glob("*.parquet") if p.name in kept
    } == kept


def test_killing_an_agent_actor_mid_run_still_completes_every_problem_once(ray_session, tmp_path):
    run = tmp_path / "run"
    killed = []

    def killer():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            try:
                actor = ray.get_actor("bdc:llm:smollm2:0")
                time.sleep(1.5)  # let some requests be in flight
                ray.kill(actor, no_restart=False)
                killed.append(True)
            except ValueError:
                time.sleep(0.2)

    t = threading.Thread(target=killer)
    t.start()
    pipeline.explore(["--run-dir", str(run), *TINY, "--set", "search.rollouts=3"])
    t.join()
    assert killed
    rows = traces(run)
    ids = [r["problem_id"] for r in rows.values()]
    assert len(ids) == 5 and len(set(ids)) == 5
    assert all(r["error"] == "" for r in rows.values())


def test_a_tree_manager_killed_mid_run_is_restarted_and_searches_only_what_is_missing(
    ray_session, tmp_path
):
    """As when its node dies: Ray restarts the TreeManager and retries its calls, which skip
    every problem whose trace was written before."""
    from bdc_ray.pipeline.explore import TREE_MANAGER

    run, before = tmp_path / "run", {}

    def killer():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not before:
            written = sorted((run / "traces").glob("*.parquet")) if run.exists() else []
            if written:
                before.update({p.name: p.stat().st_mtime_ns for p in written})
                ray.kill(ray.get_actor(TREE_MANAGER), no_restart=False)
            time.sleep(0.05)

    t = threading.Thread(target=killer)
    t.start()
    summary = pipeline.explore(["--run-dir", str(run), *TINY, "--set", "search.concurrent_trees=1"])
    t.join()
    assert 0 < len(before) < 5
    rows = traces(run)
    assert len(rows) == 5 and all(r["error"] == "" for r in rows.values())
    # the traces written before the kill were not searched or written again
    assert {n: (run / "traces" / n).stat().st_mtime_ns for n in before} == before
    progress = summary["progress"]  # the restarted actor's: it skipped what was there
    assert progress["skipped"] >= len(before) and progress["done"] + progress["skipped"] == 5


def test_solved_train_problems_give_sft_examples_in_the_shared_chat_format(ray_session, tmp_path):
    """Agents served by a real OpenAI-compatible server that writes the canonical solution:
    every train problem is solved, passes its hidden tests, and yields p2t, t2c and p2c."""
    from bdc_ray.boost.prompts import p2t_messages, simulate_messages
    from bdc_ray.data import load_humaneval
    from bdc_ray.llm.prompts import direct_messages
    from tests.helpers.openai_server import OpenAITestServer

    problems = load_humaneval()

    def respond(messages, body):
        user = messages[-1]["content"]
        if "Propose" in user:
            text = '[{"thought": "Use a loop over the input.", "Reasonableness": 0.9}]'
        else:
            p = next(p for p in problems if p.prompt in user)
            text = f"```python\n{p.prompt}{p.canonical_solution}\n```"
        return text, 10, 20, "stop"

    run = tmp_path / "run"
    with OpenAITestServer(respond, model="oracle") as server:
        pipeline.explore([
            "--run-dir", str(run), *TINY,
            "--set", "models.smollm2.backend=openai",
            "--set", f"models.smollm2.base_url={server.base_url}",
            "--set", "models.smollm2.served_name=oracle",
        ])  # fmt: skip
    by_problem = {}
    for kind in ("p2t", "t2c", "p2c"):
        rows = read_jsonl(run / "sft" / f"{kind}.jsonl")
        assert len(rows) == 3 and {r["kind"] for r in rows} == {kind}
        by_problem[kind] = {r["problem_id"]: r for r in rows}
    pid = next(iter(by_problem["p2c"]))
    p = next(x for x in problems if x.id == pid)
    assert by_problem["p2t"][pid]["messages"] == p2t_messages(p)
    assert by_problem["p2t"][pid]["response"] == "1. Use a loop over the input."
    assert by_problem["t2c"][pid]["messages"] == simulate_messages(
        p, ["Use a loop over the input."]
    )
    assert by_problem["p2c"][pid]["messages"] == direct_messages(p)
    assert p.canonical_solution.strip() in by_problem["p2c"][pid]["response"]
    results = json.loads((run / "eval" / "results.json").read_text())
    assert results["methods"]["mcts"]["pass@1"] == 1.0
    assert results["methods"]["mcts"]["train_passed_hidden"] == 3
