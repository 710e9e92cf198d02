"""Any OpenAI-compatible HTTP server (vLLM serve, our own Serve app, a hosted API).

Plain-text prompts go to ``/v1/completions``, chats to ``/v1/chat/completions``. The official
client does the timeouts and the bounded, backed-off retries (connection errors, 408, 409,
429 and 5xx); requests of one batch run concurrently.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .base import Completion, Prompt, Sampling, row_seeds, truncate_at_stop, validate_prompts


class OpenAIBackend:
    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str | None = None,
        timeout_s: float = 120.0,
        max_retries: int = 2,
        concurrency: int = 16,
    ) -> None:
        from openai import OpenAI

        api_key = "EMPTY"
        if api_key_env:
            api_key = os.environ.get(api_key_env) or ""
            if not api_key:
                raise ValueError(f"environment variable {api_key_env} (api_key_env) is not set")
        self.model = model
        self.client = OpenAI(
            base_url=base_url, api_key=api_key, timeout=timeout_s, max_retries=max_retries
        )
        self.concurrency = concurrency

    def _one(self, prompt: Prompt, sampling: Sampling, seed: int | None) -> Completion:
        common: dict[str, Any] = dict(
            model=self.model,
            max_tokens=sampling.max_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
        )
        if sampling.stop:
            common["stop"] = list(sampling.stop)
        if seed is not None:
            common["seed"] = seed
        if sampling.ignore_eos:  # vLLM's extension of the OpenAI API
            common["extra_body"] = {"ignore_eos": True}
        if isinstance(prompt, str):
            r = self.client.completions.create(prompt=prompt, **common)
            text, reason = r.choices[0].text, r.choices[0].finish_reason
        else:
            r = self.client.chat.completions.create(messages=prompt, **common)
            text, reason = r.choices[0].message.content or "", r.choices[0].finish_reason
        # servers that ignore `stop` still get the contract honoured here
        text, hit = truncate_at_stop(text, sampling.stop)
        usage = r.usage
        return Completion(
            text=text,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            finish_reason="stop" if hit or reason != "length" else "length",
        )

    def generate(
        self, prompts: list[Prompt], sampling: Sampling, seeds: list[int | None] | None = None
    ) -> list[Completion]:
        validate_prompts(prompts)
        if not prompts:
            return []
        # each request its own seed: servers seed a request's sampler with it, so repeats of
        # one prompt under one seed would come back identical
        seeds = row_seeds(sampling, len(prompts), seeds)
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(prompts))) as pool:
            return list(pool.map(lambda p, s: self._one(p, sampling, s), prompts, seeds))
