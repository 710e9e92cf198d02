"""vLLM backend (GPU). vLLM is imported lazily: the CPU install does not carry it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import Completion, Prompt, Sampling, row_seeds, validate_prompts


def _import_vllm():
    try:
        import vllm  # noqa: F401
    except ImportError as e:
        raise ImportError(
            "backend 'vllm' needs vLLM, which runs on CUDA GPUs only: install the project with "
            "the gpu extra (pip install 'bdc-ray[gpu]') on a GPU machine, or use backend "
            "'transformers' on CPU"
        ) from e
    import vllm

    return vllm


class VLLMBackend:
    name = "vllm"

    def __init__(
        self,
        model_path: str | Path,
        dtype: str = "auto",
        adapter: str | Path | None = None,
        **options: Any,
    ) -> None:
        vllm = _import_vllm()
        self._vllm = vllm
        self.lora = None
        if adapter:
            import json

            from vllm.lora.request import LoRARequest

            rank = json.loads((Path(adapter) / "adapter_config.json").read_text())["r"]
            options = {"enable_lora": True, "max_lora_rank": max(rank, 8), **options}
            self.lora = LoRARequest(Path(adapter).name, 1, str(adapter))
        self.llm = vllm.LLM(model=str(model_path), dtype=dtype, **options)

    def _params(self, sampling: Sampling, seed: int | None):
        return self._vllm.SamplingParams(
            max_tokens=sampling.max_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p if not sampling.greedy else 1.0,
            stop=list(sampling.stop) or None,
            seed=seed,
            ignore_eos=sampling.ignore_eos,
        )

    def generate(
        self, prompts: list[Prompt], sampling: Sampling, seeds: list[int | None] | None = None
    ) -> list[Completion]:
        validate_prompts(prompts)
        # one SamplingParams per prompt: vLLM seeds each request's generator with its
        # params' seed, so a shared seed would make repeats of one prompt identical
        seeds = row_seeds(sampling, len(prompts), seeds)
        params = [self._params(sampling, None if sampling.greedy else s) for s in seeds]
        out: list[Completion | None] = [None] * len(prompts)
        plain = [i for i, p in enumerate(prompts) if isinstance(p, str)]
        chats = [i for i, p in enumerate(prompts) if not isinstance(p, str)]
        if plain:
            results = self.llm.generate(
                [prompts[i] for i in plain],
                [params[i] for i in plain],
                use_tqdm=False,
                lora_request=self.lora,
            )
            for i, r in zip(plain, results, strict=True):
                out[i] = _completion(r)
        if chats:
            results = self.llm.chat(
                [prompts[i] for i in chats],
                [params[i] for i in chats],
                use_tqdm=False,
                lora_request=self.lora,
            )
            for i, r in zip(chats, results, strict=True):
                out[i] = _completion(r)
        return out  # type: ignore[return-value]


def _completion(result: Any) -> Completion:
    o = result.outputs[0]
    return Completion(
        text=o.text,
        prompt_tokens=len(result.prompt_token_ids or []),
        completion_tokens=len(o.token_ids),
        finish_reason="length" if o.finish_reason == "length" else "stop",
    )
