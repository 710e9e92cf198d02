"""Every sample drawn in search is its own draw: the `trials` programs of one simulation
differ, on the transformers backend and through a real OpenAI-compatible server, and a
rerun with the same search seed draws the same programs."""

import asyncio

import pytest

from bdc_ray.actors.agent import AgentLLM
from bdc_ray.boost.search import MCTS
from bdc_ray.config import AgentConfig, ModelConfig, SearchConfig
from bdc_ray.data.problems import function_problem
from tests.boost.scripted import FakeResult
from tests.helpers.openai_server import OpenAITestServer, backend_responder

PROBLEM = function_problem(
    "t/add", 'def add(a, b):\n    """Return a + b."""\n', "add",
    "def check(candidate):\n    assert candidate(1, 2) == 3\n",
)  # fmt: skip
AGENTS = [
    AgentConfig(name="A", temperature=1.0, max_tokens=16),
    AgentConfig(name="B", max_tokens=16),
]
TRIALS = 3


class Agents:
    """The search's LLM interface over AgentLLM bodies (the actors' code, without Ray)."""

    def __init__(self, model: ModelConfig) -> None:
        self.bodies = {a.name: AgentLLM(model.model_dump(), a.name) for a in AGENTS}

    async def generate(self, agent, prompts, sampling):
        return await self.bodies[agent].generate(prompts, sampling)


class Recorder:
    async def check(self, program, problem, tests):
        return FakeResult(0.0, "failed", [])


async def simulated_programs(agents: Agents, seed: int) -> dict[str, list[str]]:
    """One simulation of a first-level thought: each agent's `trials` programs."""
    mcts = MCTS(PROBLEM, AGENTS, agents, Recorder(), SearchConfig(trials=TRIALS), seed=seed)
    ch = mcts._new_child(mcts.root, "add the two numbers", 0.5, "A")
    await mcts.simulate(ch)
    out: dict[str, list[str]] = {}
    for p in ch.programs:
        out.setdefault(p.author, []).append(p.code)
    return out


def check_trials(agents: Agents) -> None:
    # one event loop for all runs, as in the actor (its batching task lives on that loop)
    asyncio.run(_check_trials(agents))


async def _check_trials(agents: Agents) -> None:
    first = await simulated_programs(agents, seed=1)
    assert sorted(first) == ["A", "B"] and all(len(v) == TRIALS for v in first.values())
    for author, programs in first.items():
        assert len(set(programs)) == TRIALS, f"{author}'s trials repeat: {programs}"
    assert await simulated_programs(agents, seed=1) == first  # a rerun draws the same programs
    other = await simulated_programs(agents, seed=2)
    assert other["A"] != first["A"] and other["B"] != first["B"]


def test_trials_differ_and_reproduce_on_the_transformers_backend():
    check_trials(Agents(ModelConfig(path="tiny-random-llama", batch_wait_ms=20)))


@pytest.fixture
def server(tiny_backend):
    with OpenAITestServer(backend_responder(tiny_backend), model="tiny") as s:
        yield s


def test_trials_differ_and_reproduce_through_an_openai_server(server):
    model = ModelConfig(backend="openai", base_url=server.base_url, path="tiny")
    check_trials(Agents(model))
    seeds = [r["seed"] for r in server.requests if "messages" in r]
    # every simulate request carried a seed of its own
    assert len(seeds) == 3 * 2 * TRIALS and len(set(seeds)) == 2 * 2 * TRIALS
