"""The customised solver as an OpenAI-compatible Ray Serve app.

Routes (all behind the bearer key when one is configured):
  GET  /health                  liveness + batching statistics
  GET  /v1/models               the served model ids
  POST /v1/completions          OpenAI completions (prompt: string or list), stream or not
  POST /v1/chat/completions     OpenAI chat completions, stream or not
  POST /v1/solve                problem in, program out; with tests, run in the sandbox

Model ids: `<model_name>` (the hypernetwork's gates per prompt), `<model_name>/uniform` (the
experts' mean) and `<model_name>/<expert>` (one expert alone), all served from one mixture, so
requests for different ids still share a batch. Every choice carries an extra field `gates`:
{expert: share of the gate mass} (in a stream: in the choice's last chunk, the one holding
`finish_reason`).

Concurrent requests meet in `SolverServer.generate` (`@serve.batch`): one gated-mixture batch
per wait window, each row with its own gates, token budget and stream. A `BatchWindow`
(window.py) sets Serve's batch size and wait per batch from the load, so batches do not split
under closed-loop clients.
"""

import asyncio
import hashlib
import hmac
import json
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.body_limit import RequestBodyLimitMiddleware

from ..config import ServeConfig
from ..llm.base import Completion, Prompt, Sampling, derive_seed
from .engine import UNIFORM, BatchEngine, GenRequest, RowError
from .protocol import (
    APIError,
    ChatRequest,
    CompletionRequest,
    SolveRequest,
    error_body,
    new_id,
    now,
    usage,
)
from .window import BatchWindow

log = logging.getLogger(__name__)

app = FastAPI(
    title="bdc-ray customised solver",
    description="OpenAI-compatible API of the BDC customised solver (gated mixture of LoRA experts)",
)

# set by the replica's constructor; read by the middleware of this process's app
_AUTH: dict[str, str | None] = {"key_sha256": None}
_LIMITS: dict[str, int] = {"max_body_bytes": ServeConfig().max_body_bytes}


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@app.middleware("http")
async def _require_key(request: Request, call_next):
    want = _AUTH["key_sha256"]
    if want is not None:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(key_digest(token.strip()), want):
            return JSONResponse(
                error_body(
                    "missing or invalid API key: send 'Authorization: Bearer <key>'",
                    type="authentication_error",
                    code="invalid_api_key",
                ),
                status_code=401,
            )
    return await call_next(request)


def _too_large() -> JSONResponse:
    return JSONResponse(
        error_body(
            f"request body is larger than {_LIMITS['max_body_bytes']} bytes "
            "(serve.max_body_bytes); send a shorter prompt",
            code="request_too_large",
        ),
        status_code=413,
    )


class _BodyLimit:
    """This replica's serve.max_body_bytes (known once the replica starts, after this module's
    app exists): a body whose Content-Length is larger is answered 413 before anything is read;
    one without is counted as it arrives by Starlette's RequestBodyLimitMiddleware, whose 413
    reaches `_http_error` below. Both come before FastAPI parses any JSON: a 20 MB prompt had
    been read, parsed and tokenized first (26 s, 8.7 GB)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        limit = _LIMITS["max_body_bytes"]
        if scope["type"] == "http":
            length = Headers(scope=scope).get("content-length", "")
            if length.isdigit() and int(length) > limit:
                return await _too_large()(scope, receive, send)
        await RequestBodyLimitMiddleware(self.app, limit)(scope, receive, send)


app.add_middleware(_BodyLimit)  # added last, so outermost: before the key check reads anything


def _where(loc: tuple) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    return ".".join(parts) or "body"


@app.exception_handler(RequestValidationError)
async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
    if first.get("type") == "json_invalid":
        msg = f"malformed JSON body: {first.get('ctx', {}).get('error', first['msg'])}"
        return JSONResponse(error_body(msg, param=None, code="invalid_json"), status_code=400)
    where = _where(tuple(first.get("loc", ())))
    msg = "; ".join(f"{_where(tuple(e.get('loc', ())))}: {e['msg']}" for e in errors[:5])
    return JSONResponse(error_body(msg, param=where), status_code=400)


@app.exception_handler(APIError)
async def _api_error(request: Request, exc: APIError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


_UNPARSED = "There was an error parsing the body"  # FastAPI's detail, whatever the cause


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    msg = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
    code = None
    if exc.status_code == 404:
        msg = f"no route {request.method} {request.url.path}"
    elif exc.status_code == 413:
        return _too_large()
    elif exc.detail == _UNPARSED and exc.__cause__ is not None:
        # FastAPI answers any failure to parse a body with this one sentence; say which
        cause = exc.__cause__
        if isinstance(cause, RecursionError):
            msg = "malformed JSON body: nested too deeply to parse; flatten it"
        else:
            msg = f"malformed JSON body: {str(cause)[:200] or type(cause).__name__}"
        code = "invalid_json"
    return JSONResponse(error_body(msg, type=kind, code=code), status_code=exc.status_code)


@app.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("%s %s failed", request.method, request.url.path, exc_info=exc)
    return JSONResponse(
        error_body(f"internal error: {type(exc).__name__}: {str(exc)[:300]}", type="server_error"),
        status_code=500,
    )


def _prompt_bytes(prompt: Prompt) -> int:
    if isinstance(prompt, str):
        return len(prompt.encode("utf-8"))
    return sum(len(m["content"].encode("utf-8")) for m in prompt)


def _sse(obj: dict[str, Any] | str) -> str:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n"


class SolverServer:
    """One replica: the customised solver loaded from a run directory, behind `app`.

    A plain class (the deployment below wraps it), so replicas import it, and this module's
    globals, by name instead of receiving pickled copies."""

    def __init__(self, run_dir: str, settings: dict[str, Any], key_sha256: str | None) -> None:
        from ..customize.solver import CustomizedSolver, solver_folder

        self.cfg = ServeConfig.model_validate(settings)
        _AUTH["key_sha256"] = key_sha256
        _LIMITS["max_body_bytes"] = self.cfg.max_body_bytes
        self.run_dir = Path(run_dir)
        self.solver = CustomizedSolver(
            solver_folder(run_dir),  # a run in a store: fetched on this replica's node
            dtype=self.cfg.dtype,
            max_batch_size=self.cfg.max_batch_size,
            num_threads=self.cfg.num_threads,
        )
        self.engine = BatchEngine(self.solver)
        self.context = self.engine.context_length()
        self.models = [
            self.cfg.model_name,
            f"{self.cfg.model_name}/{UNIFORM}",
            *(f"{self.cfg.model_name}/{e}" for e in self.engine.experts),
        ]
        self.window = BatchWindow(
            self.cfg.max_batch_size, self.cfg.batch_wait_timeout_s, self.cfg.batch_fill_wait_s
        )
        self.generate.set_max_batch_size(self.cfg.max_batch_size)
        self.generate.set_batch_wait_timeout_s(self.cfg.batch_wait_timeout_s)
        self._sandbox = None
        self._fatal: str | None = None
        log.info("serving %s from %s as %s", self.solver.name, run_dir, self.models)

    # ------------------------------------------------------------------ batching
    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.05)
    async def generate(self, reqs: list[GenRequest]) -> list[Completion | RowError]:
        """One batch; a request that failed alone gets its RowError, the others their answer
        (engine.py), so one bad request never fails the rest of its batch."""
        self.window.batch_started([id(r) for r in reqs])
        try:
            out = await asyncio.to_thread(self.engine.run, reqs)
        finally:
            self.window.batch_finished(len(reqs))
        for r in out:
            e = r.error if isinstance(r, RowError) else None
            if isinstance(e, RuntimeError) and ("CUDA" in str(e) or "out of memory" in str(e)):
                self._fatal = str(e)  # the health check hands the replica back to Serve
        return out

    async def _generate_row(self, req: GenRequest) -> Completion:
        """One row through the batch window (bdc_ray/serve/window.py) into `generate`."""
        self.window.enter()
        try:
            size, wait = await self.window.admit(id(req))
            self.generate.set_max_batch_size(size)  # read by Serve when a row opens a batch
            self.generate.set_batch_wait_timeout_s(wait)
            out = await self.generate(req)
        finally:
            self.window.leave(id(req))
        if isinstance(out, RowError):
            raise out.error
        return out

    def check_health(self) -> None:
        if self._fatal:
            raise RuntimeError(f"replica is unhealthy: {self._fatal}")

    # ------------------------------------------------------------------ helpers
    def _experts_of(self, model: str | None) -> str | None:
        if model is None or model == self.cfg.model_name:
            return None
        prefix = self.cfg.model_name + "/"
        if model in self.models and model.startswith(prefix):
            return model[len(prefix) :]
        raise APIError(
            404,
            f"model {model!r} does not exist; this server has {self.models}",
            param="model",
            code="model_not_found",
        )

    def _requests(
        self, prompts: list[Prompt], body: CompletionRequest | ChatRequest, budget: int | None
    ) -> tuple[list[GenRequest], list[int]]:
        experts = self._experts_of(body.model)
        if body.n > self.cfg.max_n:
            raise APIError(
                400, f"n is {body.n}; this server allows at most {self.cfg.max_n}", param="n"
            )
        total = len(prompts) * body.n
        if total > self.cfg.max_ongoing_requests:
            raise APIError(
                400,
                f"{total} completions in one request (prompts x n); this server allows at most "
                f"{self.cfg.max_ongoing_requests}",
                param="prompt",
            )
        limit = self.cfg.max_tokens_limit
        if budget is not None and budget > limit:
            raise APIError(
                400,
                f"max_tokens is {budget}; this server allows at most {limit}",
                param="max_tokens",
            )
        reqs, counts = [], []
        param = "messages" if isinstance(body, ChatRequest) else "prompt"
        for i, p in enumerate(prompts):
            size = _prompt_bytes(p)
            if size > self.cfg.max_prompt_bytes:  # before tokenizing it
                raise APIError(
                    400,
                    f"prompt {i} is {size} bytes; this server allows at most "
                    f"{self.cfg.max_prompt_bytes} (serve.max_prompt_bytes)",
                    param=param,
                    code="context_length_exceeded",
                )
            n_tok = self.engine.prompt_tokens(p)
            room = (self.context - n_tok) if self.context else limit
            want = budget if budget is not None else min(limit, room)
            if want > room or room < 1:
                raise APIError(
                    400,
                    f"prompt {i} has {n_tok} tokens; with max_tokens {want} that exceeds the "
                    f"model's context of {self.context} tokens",
                    param=param,
                    code="context_length_exceeded",
                )
            sampling = Sampling(
                max_tokens=want, temperature=body.temperature, top_p=body.top_p, stop=body.stops
            )
            for j in range(body.n):
                # each choice its own draw; a seeded request reproduces in any batch
                seed = None if body.seed is None else derive_seed(body.seed, i, j)
                reqs.append(GenRequest(p, replace(sampling, seed=seed), experts))
                counts.append(n_tok)
        return reqs, counts

    async def _run(self, reqs: list[GenRequest]) -> list[Completion]:
        return list(await asyncio.gather(*(self._generate_row(r) for r in reqs)))

    def _stream(
        self,
        reqs: list[GenRequest],
        counts: list[int],
        model: str,
        chat: bool,
        include_usage: bool,
    ) -> StreamingResponse:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        for i, r in enumerate(reqs):
            r.on_text = lambda text, i=i: loop.call_soon_threadsafe(queue.put_nowait, (i, text))
        tasks = [asyncio.ensure_future(self._generate_row(r)) for r in reqs]
        for i, t in enumerate(tasks):
            t.add_done_callback(lambda _t, i=i: queue.put_nowait((i, None)))
        rid = new_id("chatcmpl" if chat else "cmpl")
        created = now()
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
            return {"id": rid, "object": obj, "created": created, "model": model,
                    "choices": choices, **extra}  # fmt: skip

        def piece(i: int, text: str | None, finish: str | None = None, **extra: Any) -> dict:
            if chat:
                delta = {} if text is None else {"content": text}
                return {
                    "index": i,
                    "delta": delta,
                    "logprobs": None,
                    "finish_reason": finish,
                    **extra,
                }
            return {
                "index": i,
                "text": text or "",
                "logprobs": None,
                "finish_reason": finish,
                **extra,
            }

        async def events() -> AsyncIterator[str]:
            try:
                if chat:
                    for i in range(len(reqs)):
                        yield _sse(chunk([{"index": i, "delta": {"role": "assistant", "content": ""},
                                           "logprobs": None, "finish_reason": None}]))  # fmt: skip
                left, done = len(tasks), [None] * len(tasks)
                while left:
                    i, text = await queue.get()
                    if text is not None:
                        yield _sse(chunk([piece(i, text)]))
                        continue
                    left -= 1
                    exc = tasks[i].exception()
                    if exc is not None:
                        log.exception("generation failed", exc_info=exc)
                        yield _sse(
                            error_body(f"generation failed: {str(exc)[:300]}", type="server_error")
                        )
                        yield _sse("[DONE]")
                        return
                    c = done[i] = tasks[i].result()
                    yield _sse(chunk([piece(i, None, c.finish_reason, gates=c.meta.get("gates"))]))
                if include_usage:
                    yield _sse(chunk([], usage=usage(done, counts)))
                yield _sse("[DONE]")
            finally:
                for t in tasks:  # a client gone mid-stream: its rows finish, nobody waits
                    if not t.done():
                        t.add_done_callback(lambda t: t.exception())

        return StreamingResponse(events(), media_type="text/event-stream")

    # ------------------------------------------------------------------ routes
    @app.get("/health")
    async def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "model": self.cfg.model_name,
            "experts": self.engine.experts,
            "batching": self.engine.stats.snapshot(),
            "window": self.window.snapshot(),
        }

    @app.get("/v1/models")
    async def list_models(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {"id": m, "object": "model", "created": 0, "owned_by": "bdc-ray"}
                for m in self.models
            ],
        }

    @app.get("/v1/models/{model_id:path}")
    async def get_model(self, model_id: str) -> dict[str, Any]:
        self._experts_of(model_id)
        return {"id": model_id, "object": "model", "created": 0, "owned_by": "bdc-ray"}

    async def _complete(
        self, body: CompletionRequest | ChatRequest, prompts: list[Prompt], budget: int | None
    ):
        """Both OpenAI routes: stream, or one response with every choice."""
        chat = isinstance(body, ChatRequest)
        reqs, counts = self._requests(prompts, body, budget)
        if body.stream:
            return self._stream(reqs, counts, body.model, chat, body.include_usage)
        done = await self._run(reqs)
        choices = []
        for i, c in enumerate(done):
            out = (
                {"message": {"role": "assistant", "content": c.text}} if chat else {"text": c.text}
            )
            choices.append({"index": i, **out, "logprobs": None, "finish_reason": c.finish_reason,
                            "gates": c.meta.get("gates")})  # fmt: skip
        return {
            "id": new_id("chatcmpl" if chat else "cmpl"),
            "object": "chat.completion" if chat else "text_completion",
            "created": now(),
            "model": body.model,
            "choices": choices,
            "usage": usage(done, counts),
        }

    @app.post("/v1/completions")
    async def completions(self, body: CompletionRequest):
        return await self._complete(body, list(body.prompts), body.max_tokens)

    @app.post("/v1/chat/completions")
    async def chat_completions(self, body: ChatRequest):
        return await self._complete(body, [body.chat()], body.budget)

    @app.post("/v1/solve")
    async def solve(self, body: SolveRequest) -> dict[str, Any]:
        from ..data.problems import default_entry_point, problem_from_tests
        from ..llm.prompts import direct_messages, program_from_answer

        kind = body.kind
        entry = body.entry_point or default_entry_point(body.problem)
        if kind == "auto":
            kind = "function" if entry else "stdio"
        if kind == "function" and not entry:
            raise APIError(
                400, "a function problem needs a `def` or an entry_point", param="entry_point"
            )
        problem = SimpleNamespace(kind=kind, prompt=body.problem, entry_point=entry)
        chat = ChatRequest(
            model=body.model or self.cfg.model_name,
            messages=direct_messages(problem),  # the prompt the experts were trained on
            max_tokens=body.max_tokens,
            temperature=body.temperature,
            seed=body.seed,
        )
        reqs, counts = self._requests([chat.chat()], chat, chat.budget)
        (answer,) = await self._run(reqs)
        program = program_from_answer(problem, answer.text)
        out: dict[str, Any] = {
            "id": new_id("solve"),
            "object": "solve",
            "model": chat.model,
            "kind": kind,
            "entry_point": entry,
            "program": program,
            "answer": answer.text,
            "finish_reason": answer.finish_reason,
            "gates": answer.meta.get("gates"),
            "usage": usage([answer], counts),
        }
        if body.tests is not None:
            tests = [t if isinstance(t, str) else t.model_dump() for t in body.tests]
            try:
                checked = problem_from_tests(tests, entry, body.problem, problem_id="solve")
            except ValueError as e:
                raise APIError(400, f"tests: {e}", param="tests") from None
            if checked.kind != kind:
                raise APIError(
                    400, f"{checked.kind} tests given for a {kind} problem", param="tests"
                )
            result = await asyncio.to_thread(self._check, program, checked)
            out["verdict"] = result
        return out

    def _check(self, program: str, problem: Any) -> dict[str, Any]:
        if self._sandbox is None:
            self._sandbox = make_sandbox(self.cfg.solve_timeout_s, self.cfg.sandbox_workers)
        return check_program(program, problem, self._sandbox)

    def __del__(self) -> None:
        if getattr(self, "_sandbox", None) is not None:
            self._sandbox.close()


SolverDeployment = serve.deployment(serve.ingress(app)(SolverServer), name="SolverServer")


def make_sandbox(test_timeout_s: float, workers: int) -> Any:
    from ..sandbox import Limits, Sandbox

    limits = Limits(test_timeout_s=test_timeout_s, total_timeout_s=max(10.0, 4 * test_timeout_s))
    return Sandbox(concurrency=workers, limits=limits)


def check_program(program: str, problem: Any, sandbox: Any) -> dict[str, Any]:
    """Run `program` against every test of `problem` in the sandbox: the /v1/solve verdict
    (passed, pass_rate, status, per-test results) and the isolation that was in force."""
    d = sandbox.check(program, problem, tests="all").to_dict()
    d["isolation"] = sandbox.isolation
    return d


def build_app(
    run_dir: str | Path, cfg: ServeConfig, api_key: str | None = None
) -> serve.Application:
    """The Serve application of the customised solver in `run_dir` (a folder, or a run-storage
    URI each replica fetches from), sized by `cfg`. The API key travels to the replicas as its
    SHA-256 only."""
    from ..storage import RunStorage

    st = RunStorage(run_dir)  # a run in a store: each replica fetches the solver on its node
    run, missing = st.spec, not st.exists("hypernet/hypernet.json")
    if missing:
        raise FileNotFoundError(
            f"{run}: no trained hypernetwork (hypernet/hypernet.json); run jobs/full.py first"
        )
    options: dict[str, Any] = {
        "max_ongoing_requests": cfg.max_ongoing_requests,
        "ray_actor_options": {
            "num_cpus": cfg.num_cpus,
            "num_gpus": cfg.num_gpus,
            **({"resources": dict(cfg.resources)} if cfg.resources else {}),
        },
        "health_check_period_s": cfg.health_check_period_s,
    }
    if cfg.num_threads:
        options["ray_actor_options"]["runtime_env"] = {
            "env_vars": {"OMP_NUM_THREADS": str(cfg.num_threads)}
        }
    if cfg.max_replicas > cfg.min_replicas:
        options["autoscaling_config"] = {
            "min_replicas": cfg.min_replicas,
            "max_replicas": cfg.max_replicas,
            "target_ongoing_requests": cfg.target_ongoing_requests,
        }
    else:
        options["num_replicas"] = cfg.min_replicas
    digest = key_digest(api_key) if api_key else None
    return SolverDeployment.options(**options).bind(str(run), cfg.model_dump(mode="json"), digest)


def api_key_from_env(cfg: ServeConfig) -> str | None:
    """The key named by `serve.api_key_env`; an unset or empty variable is an error."""
    if not cfg.api_key_env:
        return None
    key = os.environ.get(cfg.api_key_env, "")
    if not key:
        raise ValueError(
            f"serve.api_key_env names {cfg.api_key_env!r}, but that environment variable is "
            "unset or empty; export it or drop serve.api_key_env"
        )
    return key
