"""The Serve app vs the customised solver in-process, under 1, 8 and 32 concurrent clients.

    python benchmarks/serve.py [--run-dir RUN] [--clients 1 8 32] [--tokens 32]

Without --run-dir the solver is the embedded model with K=3 random rank-8 experts and a random
hypernetwork (serving cost does not depend on trained values). Each client sends greedy
HumanEval chat requests one after another (closed loop; asyncio + aiohttp, so the load
generator's own CPU does not pace the requests) over HTTP to the Ray Serve app (one replica,
`@serve.batch` up to 32, its BatchWindow); then the same requests run in-process, in the very
batches the server formed (BatchEngine.run in this process, no HTTP, no Serve; the app is deleted
first, Ray stays up idle), in one run, side by side. Ray's workers (the replica) run at the
niceness of this process (`--worker-niceness 0`; Ray's default 15 makes them yield the CPU to
every other process, the clients included).
Prints requests/s and p50/p99 latency for each, then one JSON line:
  serve_overhead    1 - serve req/s / in-process req/s at the largest client count (<= 0.15)
  batching_speedup  serve req/s at the largest client count / serve req/s with one client
                    sending one request at a time (>= 3)
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import requests  # noqa: E402

from bdc_ray.config import ServeConfig  # noqa: E402
from bdc_ray.data import load_humaneval  # noqa: E402
from bdc_ray.llm.base import Sampling  # noqa: E402
from bdc_ray.llm.prompts import direct_messages  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def drive(url: str, prompts: list, clients: int, per_client: int, tokens: int) -> dict:
    """`clients` closed-loop clients, each sending `per_client` requests one after another.

    Asynchronous (aiohttp, one event loop): a client sends its next request as soon as its
    answer is in. Threads with `requests` cost ~2 ms of GIL-bound CPU per request here, so 32
    answers arriving together went back out over ~100 ms, trickling into the server's batch
    window and taking CPU from the replica: the load generator measured itself."""
    import asyncio

    import aiohttp

    lat: list[float] = []
    errors: list[str] = []

    async def client(session: aiohttp.ClientSession, c: int) -> None:
        for j in range(per_client):
            msgs = prompts[(c * per_client + j) % len(prompts)]
            body = {"model": "bdc-customized", "messages": msgs, "max_tokens": tokens,
                    "temperature": 0}  # fmt: skip
            t0 = time.perf_counter()
            async with session.post(url + "/v1/chat/completions", json=body) as r:
                text = await r.text()
            lat.append(time.perf_counter() - t0)
            if r.status != 200:
                errors.append(text[:200])

    async def run() -> float:
        timeout = aiohttp.ClientTimeout(total=600)
        conn = aiohttp.TCPConnector(limit=clients)
        async with aiohttp.ClientSession(timeout=timeout, connector=conn) as session:
            t0 = time.perf_counter()
            await asyncio.gather(*(client(session, c) for c in range(clients)))
            return time.perf_counter() - t0

    wall = asyncio.run(run())
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, e.g. {errors[0]}")
    n = clients * per_client
    return {"requests": n, "wall_s": wall, "rps": n / wall, "p50_s": pct(lat, 0.5),
            "p99_s": pct(lat, 0.99)}  # fmt: skip


def replay(engine, prompts: list, sizes: list[int], tokens: int) -> dict:
    """The server's batches, in-process: each request's latency is its batch's time."""
    from bdc_ray.serve.engine import GenRequest

    lat: list[float] = []
    i = 0
    t0 = time.perf_counter()
    for size in sizes:
        reqs = [GenRequest(prompts[(i + j) % len(prompts)], Sampling(max_tokens=tokens))
                for j in range(size)]  # fmt: skip
        i += size
        b0 = time.perf_counter()
        engine.run(reqs)
        lat += [time.perf_counter() - b0] * size
    wall = time.perf_counter() - t0
    return {"requests": i, "wall_s": wall, "rps": i / wall, "p50_s": pct(lat, 0.5),
            "p99_s": pct(lat, 0.99)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", help="a run with a trained hypernetwork (default: random)")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--requests", type=int, default=64, help="requests per client count (>=)")
    ap.add_argument("--tokens", type=int, default=32, help="max_tokens per request")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (replica and local)")
    ap.add_argument(
        "--warmup-rounds",
        type=int,
        default=1,
        help="unmeasured requests per client before each client count is measured",
    )
    ap.add_argument(
        "--worker-niceness",
        type=int,
        default=0,
        help="Ray's worker_niceness for this benchmark's cluster: 0 (default) runs the replica at "
        "the in-process baseline's priority; Ray's own default, 15, makes it yield the CPU to "
        "every other process, clients included",
    )
    args = ap.parse_args()

    import ray
    import torch
    from ray import serve

    from bdc_ray.customize.solver import CustomizedSolver
    from bdc_ray.customize.synthetic import random_solver_run
    from bdc_ray.llm.models import resolve_model
    from bdc_ray.serve.app import build_app
    from bdc_ray.serve.engine import BatchEngine

    problems = load_humaneval()[:64]
    prompts = [direct_messages(p) for p in problems]
    tmp = tempfile.TemporaryDirectory(prefix="bdc-serve-bench-")
    run = args.run_dir
    if not run:
        texts = [p.prompt for p in problems[:16]]
        run = random_solver_run(Path(tmp.name), resolve_model(args.model), texts, k=3, r=8,
                                b_scale=0.05)  # fmt: skip
    biggest = max(args.clients)
    cfg = ServeConfig(max_batch_size=biggest, max_ongoing_requests=max(64, biggest),
                      num_cpus=1, num_threads=args.threads, batch_wait_timeout_s=0.05)  # fmt: skip
    port = free_port()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             _system_config={"worker_niceness": args.worker_niceness})  # fmt: skip
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(run, cfg), name="bench", route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    drive(url, prompts, 1, 2, args.tokens)  # warm-up: first-call costs are not serving costs

    rows = {}
    for c in sorted(args.clients):
        per = max(1, -(-args.requests // c)) if c > 1 else max(8, args.requests // 8)
        # one unmeasured request per client first: the batch window adapts to a new load
        # within a batch or two (the first batch at 32 clients still has the size of the
        # 8-client phase's), and steady state is what is measured
        drive(url, prompts, c, args.warmup_rounds, args.tokens)
        before = requests.get(url + "/health", timeout=60).json()["batching"]["batches"]
        rows[c] = {"serve": drive(url, prompts, c, per, args.tokens)}
        h = requests.get(url + "/health", timeout=60).json()["batching"]
        rows[c]["sizes"] = h["recent"][before - h["batches"] :] if h["batches"] > before else []
        print(f"{c} clients: serve {rows[c]['serve']['rps']:.2f} req/s, batches {rows[c]['sizes']}",
              flush=True)  # fmt: skip
    serve.delete("bench")  # the replica's memory and threads go; Ray itself stays up, idle,
    # as it would under any in-process caller on a Ray node: both routes share its background

    torch.set_num_threads(args.threads)
    solver = CustomizedSolver(run, max_batch_size=biggest, num_threads=args.threads)
    engine = BatchEngine(solver)
    replay(engine, prompts, [1, 1], args.tokens)  # the same warm-up in-process
    for c in sorted(args.clients):
        rows[c]["local"] = replay(engine, prompts, rows[c]["sizes"], args.tokens)
    serve.shutdown()
    ray.shutdown()

    print(f"\n{'clients':>7} {'route':>8} {'req/s':>7} {'p50 s':>7} {'p99 s':>7} {'batch':>6}")
    for c in sorted(args.clients):
        mean_batch = statistics.mean(rows[c]["sizes"]) if rows[c]["sizes"] else 0
        for route in ("serve", "local"):
            r = rows[c][route]
            print(f"{c:>7} {route:>8} {r['rps']:>7.2f} {r['p50_s']:>7.2f} {r['p99_s']:>7.2f} "
                  f"{mean_batch:>6.1f}")  # fmt: skip
    lo, hi = min(args.clients), biggest
    overhead = 1 - rows[hi]["serve"]["rps"] / rows[hi]["local"]["rps"]
    speedup = rows[hi]["serve"]["rps"] / rows[lo]["serve"]["rps"]
    out = {
        "bench": "serve",
        "model": args.model if not args.run_dir else str(args.run_dir),
        "tokens": args.tokens,
        "worker_niceness": args.worker_niceness,
        **{f"serve_rps_{c}": round(rows[c]["serve"]["rps"], 3) for c in sorted(args.clients)},
        **{f"local_rps_{c}": round(rows[c]["local"]["rps"], 3) for c in sorted(args.clients)},
        **{f"serve_p50_s_{c}": round(rows[c]["serve"]["p50_s"], 3) for c in sorted(args.clients)},
        **{f"serve_p99_s_{c}": round(rows[c]["serve"]["p99_s"], 3) for c in sorted(args.clients)},
        f"mean_batch_{hi}": round(statistics.mean(rows[hi]["sizes"]), 2)
        if rows[hi]["sizes"]
        else 0,
        "serve_overhead": round(overhead, 4),
        "batching_speedup": round(speedup, 3),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
