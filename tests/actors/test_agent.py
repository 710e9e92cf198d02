import asyncio
import time

import pytest
import ray

from bdc_ray.actors.agent import AgentLLM, create_agent_llm
from bdc_ray.config import ModelConfig
from bdc_ray.llm.base import Sampling

TINY = ModelConfig(path="tiny-random-llama", max_batch_size=8, batch_wait_ms=50, num_cpus=0.5)


def test_concurrent_requests_share_batches_and_keep_their_answers(tiny_backend):
    agent = AgentLLM(TINY.model_dump(), "local")
    sp = Sampling(max_tokens=8)
    prompts = [f"item {i}:" for i in range(6)]

    async def run():
        return await asyncio.gather(*(agent.generate([p], sp) for p in prompts))

    outs = asyncio.run(run())
    assert [o[0].text for o in outs] == [c.text for c in tiny_backend.generate(prompts, sp)]
    info = agent.info()
    assert info["requests"] == 6 and info["batches"] < 6  # batched, not one call each


def test_different_sampling_settings_are_not_mixed():
    agent = AgentLLM(TINY.model_dump(), "local")
    greedy, sampled = Sampling(max_tokens=4), Sampling(max_tokens=4, temperature=1.0, seed=1)

    async def run():
        return await asyncio.gather(agent.generate(["a"], greedy), agent.generate(["a"], sampled))

    asyncio.run(run())
    assert agent.info()["batches"] == 2


def test_agent_actor_on_ray_restarts_after_a_crash(ray_session):
    actor = create_agent_llm(TINY.model_copy(update={"max_restarts": 2}), "restart-test")
    sp = Sampling(max_tokens=6)
    first = ray.get(actor.generate.remote(["def f():"], sp))
    assert ray.get(actor.info.remote())["name"] == "restart-test"
    ray.kill(actor, no_restart=False)  # simulate a crash; Ray restarts the actor
    deadline = time.monotonic() + 120
    while True:
        try:
            again = ray.get(actor.generate.remote(["def f():"], sp), timeout=60)
            break
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    assert again[0].text == first[0].text
    assert ray.get(actor.info.remote())["requests"] == 1  # a fresh process after the restart
    ray.kill(actor)


def test_bad_prompts_fail_the_call_not_the_actor(ray_session):
    actor = create_agent_llm(TINY, "bad-input-test")
    with pytest.raises(TypeError, match=r"prompts\[0\]"):
        ray.get(actor.generate.remote([42], Sampling()))
    assert ray.get(actor.generate.remote(["ok"], Sampling(max_tokens=2)))
    ray.kill(actor)


def test_requests_differing_only_in_seed_share_a_batch_and_keep_their_own_draws(tiny_backend):
    agent = AgentLLM(TINY.model_dump(), "local")
    a = Sampling(max_tokens=6, temperature=1.0, seed=1)
    b = Sampling(max_tokens=6, temperature=1.0, seed=2)

    async def run():
        return await asyncio.gather(agent.generate(["x", "x"], a), agent.generate(["x"], b))

    batched = asyncio.run(run())
    assert agent.info()["batches"] == 1
    # each request's rows drew what they draw alone; the repeats and the two seeds differ
    alone_a, alone_b = tiny_backend.generate(["x", "x"], a), tiny_backend.generate(["x"], b)
    assert [c.text for c in batched[0]] == [c.text for c in alone_a]
    assert [c.text for c in batched[1]] == [c.text for c in alone_b]
    assert len({batched[0][0].text, batched[0][1].text, batched[1][0].text}) == 3


def test_a_batch_that_generates_nothing_does_not_stop_the_actor():
    """Ray's counters refuse an increment of 0: a batch whose every answer was empty (the
    model's first token was its end) must not end the batching loop, or every later call
    would wait forever."""
    from bdc_ray.llm.base import Completion

    class RayLikeCounter:
        def inc(self, value, tags=None):
            if value <= 0:
                raise ValueError(f"value must be >0, got {value}")

    class Silent:
        name = "silent"

        def generate(self, prompts, sampling, seeds=None):
            return [Completion("", 1, 0, "stop") for _ in prompts]

    agent = AgentLLM(TINY.model_dump(), "local")
    agent.backend, agent._metrics = Silent(), RayLikeCounter()

    async def run():
        first = await asyncio.wait_for(agent.generate(["a"], Sampling(max_tokens=4)), 10)
        again = await asyncio.wait_for(agent.generate(["b"], Sampling(max_tokens=4)), 10)
        return first, again

    first, again = asyncio.run(run())
    assert first[0].text == again[0].text == "" and agent.info()["batches"] == 2
