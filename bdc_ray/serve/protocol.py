"""The OpenAI-compatible request and response bodies of the serving app, and its errors.

Requests are pydantic models (unknown fields are refused by name, as OpenAI does); responses
are plain dicts in OpenAI's shapes, plus one extra field per choice: ``gates``, the expert
weights the hypernetwork chose for that prompt ({expert: share of the gate mass}).
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..llm.base import Completion, Message


class APIError(Exception):
    """An error a client caused (4xx) or met (5xx), answered as OpenAI's error body."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = (
            status,
            message,
            type,
            param,
            code,
        )

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(
    message: str,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


# a seed is a signed 64-bit integer, as torch.manual_seed (and vLLM) take it; 10**30 made the
# whole batch the request was in fail with "Overflow when unpacking long long"
MIN_SEED, MAX_SEED = -(2**63), 2**63 - 1


class _Request(BaseModel):
    # allow_inf_nan=False: Python's json reads NaN and Infinity, which no field here can honour
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=MIN_SEED, le=MAX_SEED)
    user: str | None = None
    # accepted for compatibility; only their neutral values
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> str | list[str] | None:
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(not s for s in stops):
            raise ValueError("stop sequences must be non-empty strings")
        return v

    @property
    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    @model_validator(mode="after")
    def _neutral(self) -> _Request:
        for name in ("frequency_penalty", "presence_penalty"):
            if getattr(self, name) != 0:
                raise ValueError(f"{name} is not supported by this server (use 0)")
        if self.logit_bias:
            raise ValueError("logit_bias is not supported by this server")
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed with stream: true")
        return self

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class CompletionRequest(_Request):
    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for completions
    echo: bool = False
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and not v:
            raise ValueError("prompt must be a string or a non-empty list of strings")
        return v

    @model_validator(mode="after")
    def _unsupported(self) -> CompletionRequest:
        if self.echo:
            raise ValueError("echo is not supported by this server")
        if self.logprobs is not None:
            raise ValueError("logprobs is not supported by this server")
        if self.suffix:
            raise ValueError("suffix is not supported by this server")
        if self.best_of not in (None, self.n):
            raise ValueError("best_of other than n is not supported by this server")
        return self

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class ChatRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _last_turn(self) -> ChatRequest:
        if all(m.role not in ("user",) for m in self.messages):
            raise ValueError("messages must hold at least one user message")
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            if self.max_tokens != self.max_completion_tokens:
                raise ValueError("max_tokens and max_completion_tokens disagree; send one")
        return self

    @property
    def budget(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def chat(self) -> list[Message]:
        # "developer" is the newer name of the system role
        return [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            for m in self.messages
        ]


class SolveRequest(BaseModel):
    """/v1/solve: a problem in, a program out; with `tests`, the program is run against them in
    the sandbox. A problem holding a `def` is a function problem (HumanEval style: signature
    and docstring; `entry_point` defaults to the last function defined); otherwise a
    stdin/stdout problem. Tests: assert strings (call the function by name or `candidate`), or
    {input, output} objects."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: str | None = None
    problem: str = Field(min_length=1)
    kind: Literal["auto", "function", "stdio"] = "auto"
    entry_point: str | None = None
    tests: list[str] | list[IOTest] | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(0.0, ge=0, le=2)
    seed: int | None = Field(None, ge=MIN_SEED, le=MAX_SEED)

    @field_validator("tests")
    @classmethod
    def _tests(cls, v: list | None) -> list | None:
        if v is not None and not v:
            raise ValueError("tests must be a non-empty list (or left out)")
        return v


class IOTest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input: str
    output: str


def usage(completions: list[Completion], prompt_tokens: list[int]) -> dict[str, int]:
    p = sum(prompt_tokens)
    c = sum(x.completion_tokens for x in completions)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


for _m in (_Request, CompletionRequest, ChatRequest, SolveRequest):
    _m.model_rebuild()
