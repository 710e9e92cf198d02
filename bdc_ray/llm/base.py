"""One interface for every generation backend.

``backend.generate(prompts, sampling) -> list[Completion]``, one completion per prompt, in
order. A prompt is either plain text (completed as is) or a chat, a list of
``{"role", "content"}`` messages, rendered with the model's chat template.

Every prompt of a sampled batch is its own draw: row i runs under its own seed, given in
``seeds`` or derived from ``sampling.seed`` and i (:func:`row_seeds`). So several samples of one
prompt (repeat it) differ, a rerun reproduces them, and requests under different seeds still
share one batch.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

Message = dict[str, str]
Prompt = str | list[Message]


@dataclass(frozen=True)
class Sampling:
    max_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False  # generate max_tokens tokens whatever the model says (benchmarks)

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        object.__setattr__(self, "stop", tuple(self.stop))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (eos or stop string) or "length"
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Backend(Protocol):
    name: str

    def generate(
        self, prompts: list[Prompt], sampling: Sampling, seeds: list[int | None] | None = None
    ) -> list[Completion]: ...


# 31 bits: every server and library takes it (OpenAI-compatible servers, vLLM, torch)
SEED_BITS = 31


def derive_seed(*parts: object) -> int:
    """A seed from a tuple of plain values, the same in every process (unlike hash())."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % (1 << SEED_BITS)


def row_seeds(
    sampling: Sampling, n: int, seeds: list[int | None] | None = None
) -> list[int | None]:
    """The seed of each of `n` prompts: `seeds` when given, else row i of a seeded call gets
    `derive_seed(sampling.seed, i)`; None means a fresh, unreproducible draw."""
    if seeds is not None:
        if len(seeds) != n:
            raise ValueError(f"seeds: {len(seeds)} given for {n} prompts")
        return list(seeds)
    if sampling.seed is None:
        return [None] * n
    return [derive_seed(sampling.seed, i) for i in range(n)]


def validate_prompts(prompts: list[Prompt]) -> None:
    if not isinstance(prompts, list):
        raise TypeError(f"prompts must be a list, got {type(prompts).__name__}")
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            continue
        if not isinstance(p, list) or not p:
            raise TypeError(f"prompts[{i}] must be a string or a non-empty list of messages")
        for j, m in enumerate(p):
            if (
                not isinstance(m, dict)
                or not isinstance(m.get("role"), str)
                or not isinstance(m.get("content"), str)
            ):
                raise TypeError(
                    f"prompts[{i}][{j}] must be a message {{'role': str, 'content': str}}"
                )


def truncate_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """Cut `text` at the earliest stop string (the stop string itself is dropped)."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def make_backend(model_cfg: Any) -> Backend:
    """Build the backend a :class:`bdc_ray.config.ModelConfig` names."""
    try:
        return _make_backend(model_cfg)
    except TypeError as e:
        if "unexpected keyword argument" not in str(e):
            raise
        bad = str(e).split("argument")[-1].strip(" '\"")
        raise ValueError(
            f"models option {bad!r} is not an option of the {model_cfg.backend} backend "
            f"(options given: {sorted(model_cfg.options)})"
        ) from None


def _make_backend(model_cfg: Any) -> Backend:
    from .models import resolve_adapter, resolve_model

    if model_cfg.backend == "transformers":
        from .transformers_backend import TransformersBackend

        return TransformersBackend(
            resolve_model(model_cfg.path),
            dtype=model_cfg.dtype,
            max_batch_size=model_cfg.max_batch_size,
            num_threads=model_cfg.num_threads,
            adapter=resolve_adapter(model_cfg.adapter),
            **model_cfg.options,
        )
    if model_cfg.backend == "vllm":
        from .vllm_backend import VLLMBackend

        return VLLMBackend(
            resolve_model(model_cfg.path),
            dtype=model_cfg.dtype,
            adapter=resolve_adapter(model_cfg.adapter),
            **model_cfg.options,
        )
    if model_cfg.backend == "openai":
        from .openai_backend import OpenAIBackend

        return OpenAIBackend(
            base_url=model_cfg.base_url,
            model=model_cfg.served_name or model_cfg.path,
            api_key_env=model_cfg.api_key_env,
            timeout_s=model_cfg.request_timeout_s,
            max_retries=model_cfg.max_retries,
            **model_cfg.options,
        )
    raise ValueError(f"unknown backend {model_cfg.backend!r}; choose transformers, vllm or openai")
