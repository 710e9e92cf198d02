import time

import openai
import pytest

from bdc_ray.llm.base import Sampling, row_seeds
from bdc_ray.llm.openai_backend import OpenAIBackend
from tests.helpers.openai_server import OpenAITestServer, backend_responder


@pytest.fixture(scope="module")
def server(tiny_backend):
    with OpenAITestServer(backend_responder(tiny_backend), model="tiny") as s:
        yield s


def test_completions_and_chat_through_a_real_server_match_the_backend(server, tiny_backend):
    client = OpenAIBackend(server.base_url, model="tiny", timeout_s=30)
    prompts = ["def add(a, b):", [{"role": "user", "content": "Say hi"}], "Once"]
    sp = Sampling(max_tokens=12)
    remote = client.generate(prompts, sp)
    local = tiny_backend.generate(prompts, sp)
    assert [c.text for c in remote] == [c.text for c in local]
    assert [c.completion_tokens for c in remote] == [c.completion_tokens for c in local]
    kinds = {("messages" in r) for r in server.requests[-3:]}
    assert kinds == {True, False}  # chats went to /chat/completions, text to /completions
    assert server.requests[-1]["max_tokens"] == 12 and server.requests[-1]["model"] == "tiny"


def test_stop_and_each_prompts_own_seed_are_sent(server):
    client = OpenAIBackend(server.base_url, model="tiny")
    sp = Sampling(max_tokens=3, stop=("\n",), seed=5, temperature=0.5)
    client.generate(["x"], sp)
    body = server.requests[-1]
    assert body["stop"] == ["\n"] and body["temperature"] == 0.5
    assert body["seed"] == row_seeds(sp, 1)[0]
    before = len(server.requests)
    client.generate(["x"] * 3, sp)  # repeats are separate draws: a server seeds each request
    assert sorted(r["seed"] for r in server.requests[before:]) == sorted(row_seeds(sp, 3))
    assert len(set(row_seeds(sp, 3))) == 3


def test_transient_errors_are_retried_a_bounded_number_of_times(server):
    client = OpenAIBackend(server.base_url, model="tiny", max_retries=2)
    server.fail_next = 2
    before = len(server.requests)
    assert client.generate(["Once"], Sampling(max_tokens=2))[0].completion_tokens > 0
    assert len(server.requests) - before == 3  # two 503s, then the answer
    server.fail_next = 5
    before = len(server.requests)
    with pytest.raises(openai.APIStatusError):
        client.generate(["Once"], Sampling(max_tokens=2))
    assert len(server.requests) - before == 3  # gave up after 1 + max_retries
    server.fail_next = 0


def test_a_stalled_server_times_out(server):
    client = OpenAIBackend(server.base_url, model="tiny", timeout_s=0.3, max_retries=0)
    server.stall_s = 3.0
    try:
        t = time.perf_counter()
        with pytest.raises(openai.APITimeoutError):
            client.generate(["Once"], Sampling(max_tokens=2))
        assert time.perf_counter() - t < 2.5
    finally:
        server.stall_s = 0.0


def test_missing_api_key_variable_is_named(monkeypatch):
    monkeypatch.delenv("BDC_TEST_KEY", raising=False)
    with pytest.raises(ValueError, match="BDC_TEST_KEY"):
        OpenAIBackend("http://127.0.0.1:1/v1", model="m", api_key_env="BDC_TEST_KEY")
