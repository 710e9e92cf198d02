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
