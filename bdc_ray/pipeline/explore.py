"""Stage `explore` (Boost): MC-Tree-Of-Agents on the train and the test split.

Train problems give traces and SFT examples (sft/{p2t,t2c,p2c,prefs}.jsonl); test problems give
System 2 results, scored on the complete tests as method `mcts`. A rerun with the same run
directory skips problems whose trace exists for the same config and finishes the rest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any

from ..config import Config
from ..data import load_problems, make_split
from ..data.problems import Problem
from ..eval.methods import record_answers
from ..rundir import RunDir, write_jsonl
from .stages import stage

log = logging.getLogger(__name__)

SFT_KINDS = ("p2t", "t2c", "p2c")
TREE_MANAGER = "bdc:tree_manager"  # its actor's name (the dashboard shows it so)


def read_traces(run: RunDir, split: str) -> list[dict]:
    import pyarrow.parquet as pq

    rows = []
    for path in sorted((run.root / "traces").glob(f"{split}--*.parquet")):
        rows.extend(pq.read_table(path).to_pylist())
    return rows


def explored(run: RunDir, split: str, pid: str, fingerprint: str) -> bool:
    """A trace of this problem exists in the run's copy here, made under this config, by a
    tree that did not raise."""
    from ..actors.tree_manager import trace_is_current, trace_path

    return trace_is_current(trace_path(run.root, split, pid), fingerprint)


def _ids_digest(ids: dict[str, list[str]]) -> str:
    return hashlib.sha256(json.dumps(ids, sort_keys=True).encode()).hexdigest()[:16]


def _up_to_date(run: RunDir, ids: dict[str, list[str]], fingerprint: str) -> dict | None:
    """The recorded `mcts` summary when every problem and SFT file is done under this config,
    for these problems (the fingerprint leaves out how many are used)."""
    recorded = run.load_results()["methods"].get("mcts", {})
    done = (
        recorded.get("fingerprint") == fingerprint
        and recorded.get("problems") == _ids_digest(ids)
        and all((run.root / "sft" / f"{k}.jsonl").is_file() for k in SFT_KINDS)
        and all(explored(run, s, i, fingerprint) for s, todo in ids.items() for i in todo)
    )
    return recorded if done else None


@contextlib.contextmanager
def _search_actors(cfg: Config, fingerprint: str) -> Iterator[tuple[Any, Any]]:
    """The agents' model replicas, the sandbox pool and the TreeManager; all stopped on exit."""
    import ray

    from ..actors.executor import executor_pool
    from ..actors.replicas import ReplicaGroup
    from ..actors.tree_manager import TreeManagerActor

    with contextlib.ExitStack() as stack:
        groups = {
            m: stack.enter_context(ReplicaGroup.of_model(cfg.models[m], m))
            for m in sorted({a.model for a in cfg.agents})
        }
        pool = stack.enter_context(executor_pool(cfg.eval))
        tm = TreeManagerActor.options(
            name=TREE_MANAGER,
            num_cpus=0,
            resources=dict(cfg.search.manager_resources),
            max_concurrency=16,
        ).remote(
            cfg.agents,
            {a.name: groups[a.model] for a in cfg.agents},
            pool,
            cfg.search,
            cfg.seed,
            fingerprint,
        )
        stack.callback(ray.kill, tm)
        yield tm, pool


def _submit(tm: Any, run: RunDir, problems: dict[str, Problem], ids: dict, fp: str) -> tuple:
    """Both splits at once (the agents batch calls from every tree in flight)."""
    refs, total = [], 0
    for name, todo_ids in ids.items():
        todo = [problems[i] for i in todo_ids if not explored(run, name, i, fp)]
        if len(todo) < len(todo_ids):
            log.info("%s: %d of %d problems already explored, skipped",
                     name, len(todo_ids) - len(todo), len(todo_ids))  # fmt: skip
        if todo:
            refs.append(tm.explore.remote(todo, name, run.storage.spec))
            total += len(todo)
    return refs, total


def _follow(tm: Any, refs: list, total: int) -> None:
    """A progress bar over the trees until every call returns; raises what a call raised."""
    import ray
    from tqdm import tqdm

    if not refs:
        return
    interactive = sys.stderr.isatty()
    with tqdm(total=total, desc="explore", unit="problem",
              mininterval=1 if interactive else 30) as bar:  # fmt: skip
        pending = list(refs)
        while pending:
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=1.0)
            # a TreeManager restarted after its node died counts afresh (and skips what is done)
            prog = ray.get(tm.get_progress.remote())
            bar.update(max(0, prog["done"] + prog["failed"] + prog["skipped"] - bar.n))
            bar.set_postfix(rollouts=prog["rollouts"], llm=prog["llm_calls"],
                            execs=prog["executions"], refresh=False)  # fmt: skip
    ray.get(refs)


def write_sft(run: RunDir, train_ids: list[str]) -> tuple[dict[str, list], list[dict]]:
    """sft/{p2t,t2c,p2c}.jsonl and prefs.jsonl from the train split's traces."""
    wanted = set(train_ids)
    rows = [r for r in read_traces(run, "train") if r["problem_id"] in wanted]
    sft: dict[str, list] = {k: [] for k in SFT_KINDS}
    prefs: list[dict] = []
    for row in rows:
        for kind, ex in json.loads(row["examples"]).items():
            sft[kind].append(ex)
        prefs.extend(json.loads(row["prefs"]))
    for kind, examples in sft.items():
        write_jsonl(run.root / "sft" / f"{kind}.jsonl", examples)
    write_jsonl(run.root / "sft" / "prefs.jsonl", prefs)
    return sft, rows


_SUMMED = ("rollouts", "selections_below_root", "backups", "nodes", "pruned", "refined",
           "llm_calls", "executions")  # fmt: skip


def search_counts(rows: list[dict]) -> dict[str, int]:
    """What the trees of one split did: summed counts, the deepest path and backup, and how
    many trees stopped early on a program passing every public test."""
    stats = [json.loads(r["stats"]) for r in rows if r.get("stats")]
    out = {k: sum(s.get(k, 0) for s in stats) for k in _SUMMED}
    out["deepest_path"] = max((s.get("depth", 0) for s in stats), default=0)
    out["deepest_backup"] = max((s.get("deepest_backup", 0) for s in stats), default=0)
    out["early_stops"] = sum(bool(s.get("early_stopped")) for s in stats)
    out["trees"] = len(rows)
    return out


def _score_mcts(run, problems, ids, pool, sft, train_rows, fp, start) -> dict:
    """Method `mcts`: each test problem's best program on the complete tests, with the
    search's totals."""
    test_ids = ids["test"]
    from ..actors.executor import pool_scorer
    from ..boost.data import solution_code

    rows = {r["problem_id"]: r for r in read_traces(run, "test")}
    test = [problems[i] for i in test_ids if i in rows]
    answers = [f"```python\n{solution_code(p, rows[p.id]['best_program'])}\n```" for p in test]
    stats = [json.loads(rows[p.id]["stats"]) for p in test]
    totals = {k: sum(s.get(k, 0) for s in stats)
              for k in ("completion_tokens", "llm_calls", "executions", "nodes", "pruned",
                        "refined")}  # fmt: skip
    extra = {
        **totals,
        "errors": sum(1 for p in test if rows[p.id]["error"]),
        "search": {
            "train": search_counts(train_rows),
            "test": search_counts([rows[p.id] for p in test]),
        },  # fmt: skip
        "solved_public": sum(bool(rows[p.id]["solved_public"]) for p in test),
        "sft_examples": {k: len(v) for k, v in sft.items()},
        "train_passed_hidden": sum(bool(r["passed_hidden"]) for r in train_rows),
        # train problems with every test public: passing them verifies nothing held out
        "train_without_hidden": sum(not r.get("has_hidden", True) for r in train_rows),
        "train_passed_public_only": sum(bool(r.get("passed_public_only")) for r in train_rows),
        "wall_s": round(time.perf_counter() - start, 1),
        "fingerprint": fp,
        "problems": _ids_digest(ids),
    }
    return record_answers(run, "mcts", test, answers, scorer=pool_scorer(pool), extra=extra)


def explore(cfg: Config, run: RunDir) -> dict:
    """Search the first `search.train_limit` train and `search.test_limit` test problems;
    returns the `mcts` summary with the TreeManager's counters under "progress"."""
    import ray

    from ..actors.tree_manager import empty_progress

    problems = {p.id: p for p in load_problems(cfg.data)}
    split = make_split(list(problems.values()), cfg.data, run.root)
    start = time.perf_counter()
    fp = stage("explore").fingerprint(cfg)
    ids = {"train": split.train[: cfg.search.train_limit],
           "test": split.test[: cfg.search.test_limit]}  # fmt: skip
    recorded = _up_to_date(run, ids, fp)
    if recorded is not None:
        log.info("explore: every problem explored under this config; skipped")
        return {**recorded, "progress": empty_progress()}
    if all(explored(run, s, i, fp) for s, todo in ids.items() for i in todo):
        # every tree is searched (fewer problems asked for, say): the SFT files and the
        # mcts scores are redone from the traces, and no agent is started
        from ..actors.executor import executor_pool

        log.info("explore: every tree already searched; SFT data and mcts scores redone")
        with executor_pool(cfg.eval) as pool:
            sft, train_rows = write_sft(run, ids["train"])
            summary = _score_mcts(run, problems, ids, pool, sft, train_rows, fp, start)
        return {**summary, "progress": empty_progress()}
    with _search_actors(cfg, fp) as (tm, pool):
        _follow(tm, *_submit(tm, run, problems, ids, fp))
        run.storage.pull()  # the traces the TreeManager wrote into run storage
        progress = ray.get(tm.get_progress.remote())
        sft, train_rows = write_sft(run, ids["train"])
        summary = _score_mcts(run, problems, ids, pool, sft, train_rows, fp, start)
    log.info("mcts: %s", summary)
    return {**summary, "progress": progress}
