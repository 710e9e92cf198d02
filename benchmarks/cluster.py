"""Boost across nodes: does the search scale out with nodes, and what does run storage cost?

    python benchmarks/cluster.py [--agents-per-node 4] [--problems-per-node 8] [--latency 0.25]

On the single-machine test cluster (scripts/local_cluster.py: a head and two worker nodes,
each worker with its own filesystem) and the S3 test server:

1. Scale-out. MC-Tree-Of-Agents search through the TreeManager with agents simulated by
   actors of a fixed per-call latency (no model), each holding one `agent_slot` that a node
   advertises `--agents-per-node` of, so a node hosts at most that many. On 1 node: that many
   agents and `--problems-per-node` trees; on 3 nodes: 3x the agents (each pinned to its node)
   and 3x the trees. Traces go to run storage in S3 in both; the two alternate, `--repeats`
   times each. `explore_speedup_3_nodes` = median problems per second on 3 nodes / median on
   1 node (target >= 2.5).
2. Run-storage overhead. The 1-node search again with the run directory in a local folder
   and in S3, alternating, `--repeats` times each: `s3_overhead` = median wall time in S3 /
   median wall time in a folder - 1 (target <= 0.10).
Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# the driver: runs on the cluster, prints one JSON line of wall times
DRIVER = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import ray
from benchmarks.explore import InstantChecker, LatencyAgent
from bdc_ray.actors.replicas import ReplicaGroup
from bdc_ray.actors.tree_manager import TreeManagerActor
from bdc_ray.config import AgentConfig, SearchConfig
from bdc_ray.data import load_humaneval
from bdc_ray.storage import RunStorage

args = json.loads(sys.argv[2])
ray.init(address=args["address"], logging_level="ERROR", log_to_driver=False)
pool = load_humaneval()
agent = AgentConfig(name="agent", model="m")


def explore(nodes, run_dir, tag):
    actors = [LatencyAgent.options(resources={"agent_slot": 1, node: 0.001}).remote(args["latency"])
              for node in nodes for _ in range(args["agents_per_node"])]
    ray.get([a.generate.remote([[{"role": "user", "content": "warm"}]], None) for a in actors])
    checker = InstantChecker.options(resources={"head": 0.001}).remote()
    n = args["problems_per_node"] * len(nodes)
    search = SearchConfig(width=2, trials=1, rollouts=args["rollouts"], max_refines=0,
                          early_stop=False, concurrent_trees=n)
    tm = TreeManagerActor.options(num_cpus=0, resources={"head": 0.001}).remote(
        [agent], {"agent": ReplicaGroup.of_handles(actors)}, ReplicaGroup.of_handles([checker]),
        search, 0, tag)
    problems = [pool[i % len(pool)] for i in range(n)]
    t = time.perf_counter()
    ray.get(tm.explore.remote(problems, tag, run_dir))
    RunStorage(run_dir).pull()  # the driver reads what the search wrote, as the stage does
    wall = time.perf_counter() - t
    calls = ray.get(tm.get_progress.remote())["llm_calls"]
    for a in [tm, checker, *actors]:
        ray.kill(a)
    return {"nodes": len(nodes), "agents": len(actors), "problems": n, "calls": calls,
            "wall_s": wall}


out = {"scale": [], "storage": []}
for i in range(args["repeats"]):
    out["scale"].append(explore(["head"], args["s3"] + f"/scale-1-{i}", f"scale1-{i}"))
    out["scale"].append(explore(["head", "node_0", "node_1"], args["s3"] + f"/scale-3-{i}",
                                f"scale3-{i}"))
for i in range(args["repeats"]):
    for where, base in (("folder", args["folder"]), ("s3", args["s3"])):
        row = explore(["head"], f"{base}/storage-{where}-{i}", f"st{i}")
        out["storage"].append({"where": where, **row})
print(json.dumps(out))
"""


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents-per-node", type=int, default=4)
    ap.add_argument("--problems-per-node", type=int, default=8)
    ap.add_argument("--latency", type=float, default=0.25, help="seconds per agent call")
    ap.add_argument("--rollouts", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)

    from scripts.local_cluster import LocalCluster
    from tests.helpers.s3 import s3_server

    slots = {"agent_slot": args.agents_per_node}
    folder = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    with s3_server(buckets=("bench",)) as env:
        cluster = LocalCluster(workers=2, cpus_per_worker=1, head_cpus=1, env=env,
                               node_resources=slots)  # fmt: skip
        with cluster:
            spec = {"address": cluster.address, "s3": "s3://bench/run", "folder": str(folder),
                    **{k: v for k, v in vars(args).items()}}  # fmt: skip
            got = subprocess.run(
                [sys.executable, "-c", DRIVER, str(ROOT), json.dumps(spec)],
                env=cluster.env, capture_output=True, text=True, timeout=3600,
            )  # fmt: skip
    subprocess.run(["rm", "-rf", str(folder)], check=False)
    if got.returncode != 0:
        raise SystemExit(f"the benchmark driver failed:\n{got.stderr[-4000:]}")
    data = json.loads(got.stdout.strip().splitlines()[-1])

    print(f"{'run':>12} {'nodes':>5} {'agents':>6} {'trees':>5} {'calls':>6} {'wall s':>7} "
          f"{'problems/s':>10}")  # fmt: skip
    for tag, rows in (("scale", data["scale"]), ("storage", data["storage"])):
        for r in rows:
            r["problems_per_s"] = r["problems"] / r["wall_s"]
            name = tag if tag == "scale" else r["where"]
            print(f"{name:>12} {r['nodes']:>5} {r['agents']:>6} {r['problems']:>5} "
                  f"{r['calls']:>6} {r['wall_s']:>7.2f} {r['problems_per_s']:>10.2f}")  # fmt: skip
    rate = {n: statistics.median(r["problems_per_s"] for r in data["scale"] if r["nodes"] == n)
            for n in (1, 3)}  # fmt: skip
    by = {w: statistics.median(r["wall_s"] for r in data["storage"] if r["where"] == w)
          for w in ("folder", "s3")}  # fmt: skip
    result = {
        "bench": "cluster",
        "latency_s": args.latency,
        "agents_per_node": args.agents_per_node,
        "problems_per_node": args.problems_per_node,
        "rollouts": args.rollouts,
        "scale": [
            {k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}
            for r in data["scale"]
        ],  # fmt: skip
        "median_wall_s_folder": round(by["folder"], 3),
        "median_wall_s_s3": round(by["s3"], 3),
        "median_problems_per_s_1_node": round(rate[1], 3),
        "median_problems_per_s_3_nodes": round(rate[3], 3),
        "explore_speedup_3_nodes": round(rate[3] / rate[1], 3),
        "s3_overhead": round(by["s3"] / by["folder"] - 1, 4),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
