"""Boost: explore problems with MC-Tree-Of-Agents on Ray.

    python jobs/explore.py --config configs/local.yaml --run-dir runs/demo

Explores the train split (traces + SFT examples) and the test split (System 2 results scored on
the complete tests as method `mcts`). A rerun with the same run directory skips problems whose
trace exists and finishes the rest.
"""

from __future__ import annotations

import json
import sys
import time

import _common  # noqa: F401  (puts the project on sys.path)
from _common import init_ray, load, log, parser, run_main

from bdc_ray.config import Config
from bdc_ray.data import load_problems, make_split
from bdc_ray.eval.methods import format_table, record_answers
from bdc_ray.rundir import RunDir, write_jsonl


def _read_traces(run: RunDir, split: str) -> list[dict]:
    import pyarrow.parquet as pq

    rows = []
    for path in sorted((run.root / "traces").glob(f"{split}--*.parquet")):
        rows.extend(pq.read_table(path).to_pylist())
    return rows


def explore(cfg: Config, run: RunDir) -> dict:
    import ray
    from tqdm import tqdm

    from actors.agent import create_agent_llm
    from actors.executor import executor_pool_for, pool_scorer
    from actors.tree_manager import TreeManagerActor, empty_progress, trace_path

    problems = {p.id: p for p in load_problems(cfg.data)}
    split = make_split(list(problems.values()), cfg.data, run.root)
    start = time.perf_counter()
    fingerprint = cfg.fingerprint("data", "models", "agents", "search", "eval", "seed")
    train_ids = split.train[: cfg.search.train_limit]
    test_ids = split.test[: cfg.search.test_limit]

    def explored(name: str, pid: str) -> bool:
        path = trace_path(run.root, name, pid)
        if not path.exists():
            return False
        import pyarrow.parquet as pq

        row = pq.read_table(path, columns=["fingerprint", "error"]).to_pylist()[0]
        # a tree that raised is tried again; one made under another config is redone
        return row["fingerprint"] == fingerprint and not row["error"]

    recorded = run.load_results()["methods"].get("mcts", {})
    if (
        recorded.get("fingerprint") == fingerprint
        and all((run.root / "sft" / f"{k}.jsonl").is_file() for k in ("p2t", "t2c", "p2c"))
        and all(explored("train", i) for i in train_ids)
        and all(explored("test", i) for i in test_ids)
    ):
        log.info("explore: every problem explored under this config; skipped")
        return {**recorded, "progress": empty_progress()}
    used = sorted({a.model for a in cfg.agents})
    models = {
        m: [create_agent_llm(cfg.models[m], f"{m}:{i}") for i in range(cfg.models[m].replicas)]
        for m in used
    }
    pool = executor_pool_for(cfg.eval)
    tm = TreeManagerActor.options(num_cpus=0, max_concurrency=16).remote(
        [a.model_dump() for a in cfg.agents],
        {a.name: models[a.model] for a in cfg.agents},
        pool,
        cfg.search.model_dump(),
        cfg.seed,
        fingerprint,
    )
    # both splits at once: the agents batch calls from every tree in flight
    refs, total = [], 0
    for name, ids in (("train", train_ids), ("test", test_ids)):
        todo = [problems[i] for i in ids if not explored(name, i)]
        if len(todo) < len(ids):
            log.info(
                "%s: %d of %d problems already explored, skipped",
                name,
                len(ids) - len(todo),
                len(ids),
            )
        if todo:
            refs.append(tm.explore.remote(todo, name, str(run.root)))
            total += len(todo)
    if refs:
        interactive = sys.stderr.isatty()
        with tqdm(
            total=total, desc="explore", unit="problem", mininterval=1 if interactive else 30
        ) as bar:
            base = ray.get(tm.get_progress.remote())
            pending = list(refs)
            while pending:
                _, pending = ray.wait(pending, num_returns=len(pending), timeout=1.0)
                prog = ray.get(tm.get_progress.remote())
                done = prog["done"] + prog["failed"] - base["done"] - base["failed"]
                bar.update(done - bar.n)
                bar.set_postfix(
                    rollouts=prog["rollouts"],
                    llm=prog["llm_calls"],
                    execs=prog["executions"],
                    refresh=False,
                )
            ray.get(refs)  # raises what a call raised
    stats = ray.get(tm.get_progress.remote())
    train_rows = [r for r in _read_traces(run, "train") if r["problem_id"] in set(train_ids)]
    sft = {k: [] for k in ("p2t", "t2c", "p2c")}
    prefs = []
    for row in train_rows:
        for kind, ex in json.loads(row["examples"]).items():
            sft[kind].append(ex)
        prefs.extend(json.loads(row["prefs"]))
    for kind, rows in sft.items():
        write_jsonl(run.root / "sft" / f"{kind}.jsonl", rows)
    write_jsonl(run.root / "sft" / "prefs.jsonl", prefs)

    test_rows = {r["problem_id"]: r for r in _read_traces(run, "test")}
    test = [problems[i] for i in test_ids if i in test_rows]

    from bdc_ray.boost.data import solution_code

    answers = [f"```python\n{solution_code(p, test_rows[p.id]['best_program'])}\n```" for p in test]
    tree_stats = [json.loads(test_rows[p.id]["stats"]) for p in test]
    summary = record_answers(
        run,
        "mcts",
        test,
        answers,
        scorer=pool_scorer(pool),
        extra={
            "completion_tokens": sum(s.get("completion_tokens", 0) for s in tree_stats),
            "llm_calls": sum(s.get("llm_calls", 0) for s in tree_stats),
            "executions": sum(s.get("executions", 0) for s in tree_stats),
            "nodes": sum(s.get("nodes", 0) for s in tree_stats),
            "pruned": sum(s.get("pruned", 0) for s in tree_stats),
            "refined": sum(s.get("refined", 0) for s in tree_stats),
            "errors": sum(1 for p in test if test_rows[p.id]["error"]),
            "solved_public": sum(bool(test_rows[p.id]["solved_public"]) for p in test),
            "sft_examples": {k: len(v) for k, v in sft.items()},
            "train_passed_hidden": sum(bool(r["passed_hidden"]) for r in train_rows),
            "wall_s": round(time.perf_counter() - start, 1),
            "fingerprint": fingerprint,
        },
    )
    summary["progress"] = stats
    for handles in models.values():
        for h in handles:
            ray.kill(h)
    ray.kill(tm)
    ray.kill(pool)
    return summary


def main(argv: list[str] | None = None) -> dict:
    args = parser(__doc__.splitlines()[1]).parse_args(argv)
    cfg = load(args)
    run = RunDir(args.run_dir)
    init_ray(cfg)
    summary = explore(cfg, run)
    results = run.load_results()
    print("\n" + format_table(results["methods"]))
    print(f"\nmcts pass@1 = {summary['pass@1']:.3f} on {summary['n']} test problems")
    return summary


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
