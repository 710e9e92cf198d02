import importlib.util

import pytest

from bdc_ray.llm.base import Sampling


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed")
def test_missing_vllm_gives_a_clear_error(tiny_model_path):
    from bdc_ray.llm.vllm_backend import VLLMBackend

    with pytest.raises(ImportError, match="gpu extra"):
        VLLMBackend(tiny_model_path)


@pytest.mark.gpu
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="needs vLLM (gpu extra)")
def test_vllm_batched_greedy_matches_transformers(embedded_model_path):
    from bdc_ray.llm.transformers_backend import TransformersBackend
    from bdc_ray.llm.vllm_backend import VLLMBackend

    prompts = ["def fib(n):", [{"role": "user", "content": "Write hello world in Python."}]]
    sp = Sampling(max_tokens=12)
    v = VLLMBackend(embedded_model_path, dtype="float32", gpu_memory_utilization=0.3)
    t = TransformersBackend(embedded_model_path, dtype="float32")
    out_v, out_t = v.generate(prompts, sp), t.generate(prompts, sp)
    assert [c.completion_tokens > 0 for c in out_v] == [True, True]
    # same model, same greedy decoding: the first tokens agree
    assert [c.text[:8] for c in out_v] == [c.text[:8] for c in out_t]


def test_vllm_gets_one_sampling_params_per_prompt_with_its_own_seed(monkeypatch):
    """What reaches vLLM's API, checked against a recording stand-in of the `vllm` module
    (vLLM itself needs a GPU): repeats of a prompt must not share a seed, since vLLM seeds
    each request's generator with its params' seed."""
    import sys
    import types
    from dataclasses import dataclass, field

    from bdc_ray.llm.base import row_seeds
    from bdc_ray.llm.vllm_backend import VLLMBackend

    @dataclass
    class SamplingParams:
        max_tokens: int
        temperature: float
        top_p: float
        stop: list | None
        seed: int | None
        ignore_eos: bool

    @dataclass
    class LLM:
        model: str
        dtype: str
        calls: list = field(default_factory=list)

        def _answer(self, kind, prompts, params, **kw):
            assert isinstance(params, list) and len(params) == len(prompts)
            self.calls.append((kind, prompts, params))
            out = types.SimpleNamespace(text="ok", token_ids=[1], finish_reason="stop")
            return [types.SimpleNamespace(outputs=[out], prompt_token_ids=[1]) for _ in prompts]

        def generate(self, prompts, params, **kw):
            return self._answer("generate", prompts, params, **kw)

        def chat(self, prompts, params, **kw):
            return self._answer("chat", prompts, params, **kw)

    fake = types.ModuleType("vllm")
    fake.SamplingParams, fake.LLM = SamplingParams, LLM
    monkeypatch.setitem(sys.modules, "vllm", fake)
    backend = VLLMBackend("some/model")
    chat = [{"role": "user", "content": "hi"}]
    sp = Sampling(max_tokens=5, temperature=0.8, seed=11)
    assert len(backend.generate(["a", chat, "a", chat], sp)) == 4
    (kind1, _, plain), (kind2, _, chats) = backend.llm.calls
    seeds = row_seeds(sp, 4)
    assert (kind1, kind2) == ("generate", "chat")
    assert [p.seed for p in plain] == [seeds[0], seeds[2]]
    assert [p.seed for p in chats] == [seeds[1], seeds[3]]
    assert len(set(seeds)) == 4 and {p.temperature for p in plain + chats} == {0.8}
    backend.llm.calls.clear()
    backend.generate(["a"], sp, seeds=[99])
    assert backend.llm.calls[0][2][0].seed == 99
