"""The Serve app driven as users drive it: the official `openai` client (completions, chat,
streaming), raw HTTP for malformed requests (all 4xx, OpenAI error bodies), the API key,
/v1/solve with the sandbox, and a replica killed under load."""

import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import requests

from bdc_ray.config import ServeConfig
from bdc_ray.llm.base import Sampling
from tests.helpers.serving import serve_app

KEY = "test-key-123"
MODEL = "bdc-customized"


@pytest.fixture(scope="module")
def server(ray_session, solver_run):
    cfg = ServeConfig(num_cpus=0.5, max_batch_size=8, batch_wait_timeout_s=0.2, max_tokens_limit=64)
    with serve_app(solver_run, cfg, "bdc", api_key=KEY) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0, timeout=120)


def _auth():
    return {"Authorization": f"Bearer {KEY}"}


def test_models_lists_the_customised_solver_its_mean_and_each_expert(client):
    ids = [m.id for m in client.models.list().data]
    assert ids == [MODEL, f"{MODEL}/uniform", f"{MODEL}/cluster_0", f"{MODEL}/cluster_1"]


def test_completion_equals_the_solver_in_process_and_carries_gates(client, solver):
    r = client.completions.create(model=MODEL, prompt="def add(a, b):", max_tokens=8, temperature=0)
    local = solver.generate(["def add(a, b):"], Sampling(max_tokens=8))[0]
    c = r.choices[0]
    assert c.text == local.text and c.finish_reason == local.finish_reason
    assert r.usage.completion_tokens == local.completion_tokens
    assert r.usage.prompt_tokens == local.prompt_tokens
    assert c.gates == pytest.approx(local.meta["gates"], abs=1e-4)
    assert sum(c.gates.values()) == pytest.approx(1, abs=1e-3)


def test_chat_stream_adds_up_to_the_non_streamed_answer(client, reference_rows):
    msgs = reference_rows[1]["messages"]
    full = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=20, temperature=0)
    stream = client.chat.completions.create(
        model=MODEL,
        messages=msgs,
        max_tokens=20,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == full.choices[0].message.content and len(chunks) > 5
    assert chunks[0].choices[0].delta.role == "assistant"
    last = [ch for ch in chunks if ch.choices and ch.choices[0].finish_reason][-1]
    assert last.choices[0].finish_reason == full.choices[0].finish_reason
    assert last.choices[0].model_extra["gates"] == full.choices[0].model_extra["gates"]
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_completions_stream_with_several_prompts_and_n(client):
    prompts = ["def square(x):", "import math\n"]
    full = client.completions.create(model=MODEL, prompt=prompts, n=2, max_tokens=10, temperature=0)
    assert len(full.choices) == 4
    stream = client.completions.create(
        model=MODEL, prompt=prompts, n=2, max_tokens=10, temperature=0, stream=True
    )
    texts = ["", "", "", ""]
    finish = {}
    for ch in stream:
        for c in ch.choices:
            texts[c.index] += c.text
            if c.finish_reason:
                finish[c.index] = c.finish_reason
    assert texts == [c.text for c in full.choices]
    assert finish == {c.index: c.finish_reason for c in full.choices}
    assert full.choices[0].text == full.choices[1].text  # greedy: n copies agree


def test_a_seeded_request_gives_n_distinct_choices_and_reproduces(client):
    def texts():
        r = client.completions.create(
            model=MODEL, prompt="def f(x):", n=3, max_tokens=10, temperature=1.0, seed=9
        )
        return [c.text for c in r.choices]

    first = texts()
    assert len(set(first)) == 3 and texts() == first


def test_an_expert_model_id_serves_that_expert_alone(client):
    r = client.completions.create(
        model=f"{MODEL}/cluster_1", prompt="x = ", max_tokens=4, temperature=0
    )
    assert r.choices[0].model_extra["gates"] == {"cluster_0": 0.0, "cluster_1": 1.0}


def test_concurrent_requests_share_a_batch(client, server):
    def one(i):
        return client.completions.create(
            model=MODEL, prompt=f"# task {i}\n", max_tokens=12, temperature=0
        )

    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(one, range(8)))
    assert all(o.choices[0].text is not None for o in outs)
    stats = requests.get(server + "/health", headers=_auth(), timeout=30).json()["batching"]
    assert stats["max_batch"] >= 4, stats


BAD = [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}, 400, "model"),
    ("/v1/chat/completions", {"model": MODEL}, 400, "messages"),
    ("/v1/chat/completions", {"model": MODEL, "messages": []}, 400, "messages"),
    (
        "/v1/chat/completions",
        {"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]},
        400,
        "role",
    ),
    (
        "/v1/chat/completions",
        {"model": MODEL, "messages": [{"role": "user", "content": 5}]},
        400,
        "content",
    ),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "temperature": "hot"}, 400, "temperature"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 100000}, 400, "at most 64"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ("/v1/completions", {"model": MODEL, "prompt": "x" * 40000, "max_tokens": 8}, 400, "context"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "n": 50}, 400, "at most 8"),
    (
        "/v1/completions",
        {"model": MODEL, "prompt": "x", "stop": ["a", "b", "c", "d", "e"]},
        400,
        "stop",
    ),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "logprobs": 2}, 400, "logprobs"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "temprature": 0}, 400, "temprature"),
    ("/v1/completions", {"model": MODEL, "prompt": []}, 400, "prompt"),
    ("/v1/completions", {"model": "gpt-9", "prompt": "x"}, 404, "does not exist"),
    ("/v1/solve", {"problem": ""}, 400, "problem"),
    (
        "/v1/solve",
        {"problem": "def f(x):\n    pass", "tests": [{"input": "1", "output": "1"}]},
        400,
        "tests",
    ),
    ("/v1/solve", {"problem": "def f(x):", "tests": ["assert f(1)", {"input": "1"}]}, 400, "tests"),
]


@pytest.mark.parametrize("path,body,status,needle", BAD, ids=[f"{b[0]}-{b[3]}" for b in BAD])
def test_bad_requests_get_4xx_with_an_openai_error_body(server, path, body, status, needle):
    r = requests.post(server + path, json=body, headers=_auth(), timeout=60)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert needle in err["message"] + str(err.get("param")), err


def test_malformed_json_unknown_route_and_wrong_method(server):
    r = requests.post(
        server + "/v1/completions",
        data=b'{"model": "x", ',
        headers={**_auth(), "Content-Type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 400 and "malformed JSON" in r.json()["error"]["message"]
    r = requests.post(
        server + "/v1/completions",
        data=b"[1, 2]",
        headers={**_auth(), "Content-Type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 400 and "error" in r.json()
    r = requests.get(server + "/v1/nothing", headers=_auth(), timeout=30)
    assert r.status_code == 404 and "no route" in r.json()["error"]["message"]
    r = requests.get(server + "/v1/completions", headers=_auth(), timeout=30)
    assert r.status_code == 405 and "error" in r.json()


def test_openai_client_sees_typed_errors(client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="at most 64"):
        client.completions.create(model=MODEL, prompt="x", max_tokens=65)


def test_every_route_needs_the_key(server):
    for method, path in [("get", "/health"), ("get", "/v1/models"), ("post", "/v1/completions"),
                         ("post", "/v1/chat/completions"), ("post", "/v1/solve"), ("get", "/docs")]:  # fmt: skip
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
            r = getattr(requests, method)(server + path, headers=headers, timeout=30)
            assert r.status_code == 401, (path, headers, r.text)
            assert r.json()["error"]["code"] == "invalid_api_key"
    bad = openai.OpenAI(base_url=server + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_solve_returns_a_program_and_the_sandbox_verdict(server):
    problem = 'def add(a: int, b: int) -> int:\n    """Return a + b."""\n'
    body = {
        "problem": problem,
        "tests": ["assert add(1, 2) == 3", "assert candidate(2, 2) == 4"],
        "max_tokens": 24,
    }
    r = requests.post(server + "/v1/solve", json=body, headers=_auth(), timeout=120)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["kind"] == "function" and out["entry_point"] == "add"
    assert out["program"].startswith(problem)  # the prompt's context plus the model's answer
    v = out["verdict"]  # a random tiny model does not solve it, and the sandbox says so
    assert v["passed"] is False and len(v["tests"]) == 2
    assert {t["status"] for t in v["tests"]} <= {"failed", "error", "timeout", "killed"}
    assert set(out["gates"]) == {"cluster_0", "cluster_1"}


def test_solve_checks_pass_a_correct_program():
    from bdc_ray.data.problems import problem_from_tests
    from bdc_ray.serve.app import check_program, make_sandbox

    problem = problem_from_tests(
        ["assert add(1, 2) == 3", "assert candidate(-1, 1) == 0"], prompt="def add(a, b):\n"
    )
    with make_sandbox(3.0, 1) as sb:
        good = check_program("def add(a, b):\n    return a + b\n", problem, sb)
        bad = check_program("def add(a, b):\n    return a + b if a > 0 else 1\n", problem, sb)
    assert good["passed"] and good["pass_rate"] == 1.0
    assert not bad["passed"] and bad["pass_rate"] == 0.5


def test_a_killed_replica_is_replaced_and_later_requests_succeed(ray_session, server, solver_run):
    import ray
    from ray import serve

    from bdc_ray.serve.app import build_app

    cfg = ServeConfig(num_cpus=0.25, min_replicas=2, max_replicas=2, batch_wait_timeout_s=0.01)
    serve.run(build_app(solver_run, cfg), name="two", route_prefix="/two")
    url = server + "/two/v1/completions"
    body = {"model": MODEL, "prompt": "def f():", "max_tokens": 8, "temperature": 0}
    replicas = [a for a in ray.util.list_named_actors(all_namespaces=True)
                if a["name"].startswith("SERVE_REPLICA::two#")]  # fmt: skip
    assert len(replicas) == 2
    codes, stop = [], threading.Event()

    def load():
        while not stop.is_set():
            try:
                codes.append(requests.post(url, json=body, timeout=60).status_code)
            except requests.RequestException:
                codes.append(-1)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while len(codes) < 8 and time.monotonic() < deadline:
        time.sleep(0.05)
    victim = replicas[0]
    ray.kill(ray.get_actor(victim["name"], namespace=victim["namespace"]), no_restart=True)
    served_after_kill = len(codes)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # Serve notices and starts a replacement
        names = {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                 if a["name"].startswith("SERVE_REPLICA::two#")}  # fmt: skip
        status = serve.status().applications["two"].deployments["SolverServer"]
        if victim["name"] not in names and len(names) == 2 and status.status == "HEALTHY":
            break
        time.sleep(0.5)
    else:
        pytest.fail("the killed replica was not replaced")
    stop.set()
    for t in threads:
        t.join(timeout=120)
    assert codes[:served_after_kill].count(200) >= 8
    later = [requests.post(url, json=body, timeout=60) for _ in range(6)]
    assert [r.status_code for r in later] == [200] * 6
    assert len({r.json()["choices"][0]["text"] for r in later}) == 1  # same greedy answer
    serve.delete("two")


def test_serve_job_refuses_a_run_without_a_hypernetwork(tmp_path):
    proc = subprocess.run(
        [sys.executable, "jobs/serve.py", "--run-dir", str(tmp_path / "empty"), "--detach"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and "no trained hypernetwork" in proc.stderr


def test_serve_job_refuses_an_unset_key_variable(tmp_path, solver_run):
    proc = subprocess.run(
        [sys.executable, "jobs/serve.py", "--run-dir", str(solver_run), "--set",
         "serve.api_key_env=BDC_NO_SUCH_VAR", "--detach"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and "BDC_NO_SUCH_VAR" in proc.stderr
