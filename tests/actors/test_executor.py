import os
import time

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
