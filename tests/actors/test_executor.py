import os
import time

import pytest
import ray

from bdc_ray.actors.executor import create_executor_pool
from bdc_ray.data import load_humaneval


def test_executor_pool_runs_checks_concurrently_and_survives_hostile_programs(ray_session):
    pool = create_executor_pool(
        slots=2, limits={"test_timeout_s": 0.5, "total_timeout_s": 2.0}, name="test-pool"
    )
    problems = load_humaneval()[:12]
    good = [(p.prompt + p.canonical_solution, p, "all") for p in problems]
    hostile = [
        ("import os\nos.kill(os.getppid(), 9)\n", problems[0], "all"),
        ("def has_close_elements(a, b):\n    while True: pass\n", problems[0], "all"),
    ]
    start = time.perf_counter()
    slow = pool.check.remote(*hostile[1])  # a slot busy with a timeout does not block the rest
    results = ray.get(pool.check_many.remote(good + hostile[:1]))
    fast_s = time.perf_counter() - start
    assert [r.passed for r in results[:12]] == [True] * 12
    assert results[12].status == "error" and not results[12].passed
    late = ray.get(slow)
    assert late.status == "timeout"
    assert fast_s < time.perf_counter() - start  # the good checks finished before the slow one
    assert ray.get(pool.check.remote(*good[0])).passed  # still serving
    iso = ray.get(pool.isolation.remote())
    template = f"/proc/{iso['template_pid']}"
    assert iso["slots"] == 2 and iso["net_namespace"] is True and os.path.isdir(template)
    pool.__ray_terminate__.remote()  # a graceful end: the sandbox's template goes with it
    deadline = time.monotonic() + 30
    while os.path.exists(template) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not os.path.exists(template)


def test_executor_pools_share_the_checks_and_report_their_isolation(ray_session, caplog):
    from bdc_ray.actors.executor import executor_pool
    from bdc_ray.config import EvalConfig

    cfg = EvalConfig(workers=1, executor_cpus=0, executor_pools=2, timeout_s=2.0)
    problems = load_humaneval()[:4]
    with caplog.at_level("INFO", logger="bdc_ray.actors.executor"):
        with executor_pool(cfg, name="test-pools") as pools:
            refs = [pools.call("check", p.prompt + p.canonical_solution, p) for p in problems]
            assert all(r.passed for r in ray.get(refs))
            done = [s["done"] for s in ray.get([h.stats.remote() for h in pools.handles])]
            handles = list(pools.handles)
    assert done == [2, 2]  # round robin over both pools
    reports = [r.getMessage() for r in caplog.records if "sandbox pool" in r.getMessage()]
    assert len(reports) == 2 and all("isolation layers missing" in m for m in reports)
    assert {m.split()[2] for m in reports} == {"test-pools:0", "test-pools:1"}
    with pytest.raises(ray.exceptions.RayActorError):  # stopped with the block
        ray.get(handles[0].stats.remote(), timeout=30)
