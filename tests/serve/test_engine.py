"""The serving engine in-process: requests with different budgets, gates and streams share one
batch and each gets what it would get alone."""

import pytest

from bdc_ray.llm.base import Sampling
from bdc_ray.serve.engine import UNIFORM, BatchEngine, GenRequest, TextStream


@pytest.fixture(scope="module")
def engine(solver):
    return BatchEngine(solver)


def test_rows_with_their_own_budgets_get_what_they_get_alone(engine, solver, reference_rows):
    prompts = [r["messages"] for r in reference_rows[:4]]
    budgets = [3, 17, 9, 17]
    out = engine.run(
        [GenRequest(p, Sampling(max_tokens=b)) for p, b in zip(prompts, budgets, strict=True)]
    )
    assert engine.stats.batches[-1] == 4 and engine.stats.generate_calls >= 1
    for p, b, c in zip(prompts, budgets, out, strict=True):
        alone = solver.generate([p], Sampling(max_tokens=b))[0]
        assert (c.text, c.completion_tokens, c.finish_reason) == (
            alone.text,
            alone.completion_tokens,
            alone.finish_reason,
        )
        assert c.completion_tokens <= b


def test_streamed_pieces_add_up_to_the_final_text(engine, reference_rows):
    pieces = {0: [], 1: []}
    reqs = [
        GenRequest(reference_rows[i]["messages"], Sampling(max_tokens=24), on_text=pieces[i].append)
        for i in (0, 1)
    ]
    out = engine.run(reqs)
    for i in (0, 1):
        assert len(pieces[i]) > 3  # it really streamed, token by token
        assert "".join(pieces[i]) == out[i].text


def test_expert_and_uniform_rows_use_those_gates_in_a_mixed_batch(engine, solver, reference_rows):
    p = reference_rows[0]["messages"]
    s = Sampling(max_tokens=12)
    out = engine.run([GenRequest(p, s), GenRequest(p, s, "cluster_1"), GenRequest(p, s, UNIFORM)])
    assert out[1].meta["gates"] == {"cluster_0": 0.0, "cluster_1": 1.0}
    assert out[2].meta["gates"] == {"cluster_0": 0.5, "cluster_1": 0.5}
    one_hot = solver.mix.expert_gates(1, 1)
    assert out[1].text == solver.generate([p], s, gates=one_hot)[0].text
    assert out[0].meta["gates"] == solver.generate([p], s)[0].meta["gates"]


def test_different_sampling_settings_are_generated_apart(engine, reference_rows):
    p = reference_rows[0]["messages"]
    before = engine.stats.generate_calls
    out = engine.run(
        [
            GenRequest(p, Sampling(max_tokens=6)),
            GenRequest(p, Sampling(max_tokens=6, temperature=0.9, seed=1)),
        ]
    )
    assert engine.stats.generate_calls == before + 2 and len(out) == 2


def test_seeded_rows_share_a_call_and_draw_what_they_draw_alone(engine, solver, reference_rows):
    p = reference_rows[0]["messages"]
    s1, s2 = (Sampling(max_tokens=8, temperature=1.0, seed=k) for k in (1, 2))
    before = engine.stats.generate_calls
    out = engine.run([GenRequest(p, s1), GenRequest(p, s2), GenRequest(p, s1)])
    assert engine.stats.generate_calls == before + 1  # seeds differ, one batch
    alone = solver.generate([p], s1, seeds=[1])[0].text
    assert out[0].text == out[2].text == alone
    assert out[1].text == solver.generate([p], s2, seeds=[2])[0].text != alone


class _Chars:
    """A tokenizer whose tokens are characters."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids)


def test_stream_holds_back_a_possible_stop_string_and_never_sends_it():
    sent = []
    s = TextStream(_Chars(), ("\nEND",), sent.append)
    for ch in "ab\nEN":
        s.push(ord(ch))
    assert "".join(sent) == "ab"  # "\nEN" might still become the stop string
    for ch in "Dxyz":
        s.push(ord(ch))
    assert "".join(sent) == "ab" and s.stopped
    s.finish("ab")
    assert "".join(sent) == "ab"
    t = TextStream(_Chars(), ("\nEND",), sent.clear() or sent.append)
    for ch in "ab\nEx":
        t.push(ord(ch))
    t.finish("ab\nExyz")
    assert "".join(sent) == "ab\nExyz"
