"""A small but real OpenAI-compatible HTTP server for tests (uvicorn on 127.0.0.1).

It answers /v1/completions and /v1/chat/completions through any `respond` function, e.g. a
TransformersBackend, and can be told to fail its first N requests with 503 or to stall, so
clients' retries and timeouts meet real sockets."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

Respond = Callable[[Any, dict[str, Any]], tuple[str, int, int, str]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OpenAITestServer:
    def __init__(self, respond: Respond, model: str = "test-model") -> None:
        self.respond = respond
        self.model = model
        self.fail_next = 0  # answer this many requests with 503 first
        self.stall_s = 0.0  # sleep before answering
        self.requests: list[dict[str, Any]] = []
        self.port = _free_port()
        self.app = self._build()
        self.server = uvicorn.Server(
            uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _build(self) -> FastAPI:
        app = FastAPI()

        async def gate(body: dict[str, Any]) -> JSONResponse | None:
            self.requests.append(body)
            if self.fail_next > 0:
                self.fail_next -= 1
                return JSONResponse({"error": {"message": "overloaded"}}, status_code=503)
            if self.stall_s:
                import asyncio

                await asyncio.sleep(self.stall_s)
            return None

        def usage(p: int, c: int) -> dict[str, int]:
            return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

        @app.get("/v1/models")
        async def models() -> dict[str, Any]:
            return {"object": "list", "data": [{"id": self.model, "object": "model"}]}

        @app.post("/v1/completions")
        async def completions(request: Request):
            body = await request.json()
            if (err := await gate(body)) is not None:
                return err
            text, p, c, reason = self.respond(body["prompt"], body)
            return {
                "id": "cmpl-test",
                "object": "text_completion",
                "created": int(time.time()),
                "model": self.model,
                "choices": [{"index": 0, "text": text, "finish_reason": reason, "logprobs": None}],
                "usage": usage(p, c),
            }

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            body = await request.json()
            if (err := await gate(body)) is not None:
                return err
            text, p, c, reason = self.respond(body["messages"], body)
            return {
                "id": "chatcmpl-test",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": self.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": reason,
                    }
                ],
                "usage": usage(p, c),
            }

        return app

    def __enter__(self) -> OpenAITestServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def backend_responder(backend) -> Respond:
    """Answer with a real generation backend (sampling fields taken from the request)."""
    from bdc_ray.llm.base import Sampling

    def respond(prompt: Any, body: dict[str, Any]) -> tuple[str, int, int, str]:
        sampling = Sampling(
            max_tokens=body.get("max_tokens", 16),
            temperature=body.get("temperature", 0.0),
            top_p=body.get("top_p", 1.0),
            stop=tuple(body.get("stop") or ()),
            seed=body.get("seed"),
        )
        c = backend.generate([prompt], sampling)[0]
        return c.text, c.prompt_tokens, c.completion_tokens, c.finish_reason

    return respond
