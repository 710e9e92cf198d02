"""Batched generation for serving: many requests, one gated-mixture batch.

A :class:`GenRequest` is one prompt of one client request (a request with n choices or a list
of prompts is several). :meth:`BatchEngine.run` takes whatever requests a batch collected and
generates them together: requests that share sampling settings (temperature, top_p, stop)
go into one `generate` call, each row with its own seed, its own token budget and its own gates
(the hypernetwork's, the experts' mean, or one expert alone); a seeded row draws the same
whatever shares its batch. A request with `on_text` receives its
text as it is generated (streaming); the pieces always add up to the final text.

A request that fails fails alone: when a `generate` call raises, each of its requests that has
not streamed any text yet is generated again on its own, and only those that fail alone get
the exception, in their place in the returned list (:class:`RowError`); the other groups of
the batch are not touched.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ..llm.base import Completion, Prompt, Sampling

log = logging.getLogger(__name__)

UNIFORM = "uniform"  # the experts' mean: every gate 1/K


@dataclass
class GenRequest:
    prompt: Prompt
    sampling: Sampling
    experts: str | None = None  # None: the hypernetwork's gates; "uniform"; or an expert name
    on_text: Callable[[str], None] | None = None  # called from the generating thread


@dataclass
class EngineStats:
    batches: list[int] = field(default_factory=list)  # requests per run() call
    generate_calls: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            b = list(self.batches)
        return {
            "batches": len(b),
            "requests": sum(b),
            "mean_batch": round(sum(b) / len(b), 2) if b else 0.0,
            "max_batch": max(b, default=0),
            "generate_calls": self.generate_calls,
            "recent": b[-256:],  # sizes of the latest batches, oldest first
        }


class TextStream:
    """Turns one row's tokens into text pieces. Holds back an incomplete UTF-8 character and
    any tail that could still become a stop string, so no piece ever has to be taken back."""

    def __init__(self, tokenizer: Any, stop: tuple[str, ...], emit: Callable[[str], None]):
        self.tokenizer, self.stop, self.emit = tokenizer, stop, emit
        self.hold = max((len(s) for s in stop), default=1) - 1
        self.tokens: list[int] = []
        self.sent = ""
        self.stopped = False

    def push(self, token: int) -> None:
        if self.stopped:
            return
        self.tokens.append(token)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # half a character: wait for the rest
            return
        cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            text, self.stopped = text[:cut], True
            safe = len(text)
        else:
            safe = len(text) - self.hold
        if safe > len(self.sent) and text.startswith(self.sent):
            self.emit(text[len(self.sent) : safe])
            self.sent = text[:safe]

    def finish(self, final: str) -> None:
        """Send what is left of the final text (the backend's, which is authoritative)."""
        if final.startswith(self.sent):
            if len(final) > len(self.sent):
                self.emit(final[len(self.sent) :])
        else:  # cannot happen with a prefix-stable tokenizer; never send text twice
            log.warning("streamed text is not a prefix of the final text; stream ends early")
        self.sent = final


@dataclass
class RowError:
    """The failure of one request of a batch, in that request's place in `run`'s result."""

    error: Exception


def sampling_key(s: Sampling) -> tuple:
    return (s.temperature, s.top_p, s.stop, s.ignore_eos)


class BatchEngine:
    """Runs batches of GenRequests on a CustomizedSolver (or anything with its `generate`,
    `gates`, `mix` and `backend.tokenizer`). Not thread-safe: one batch at a time."""

    def __init__(self, solver: Any) -> None:
        self.solver = solver
        self.tokenizer = solver.backend.tokenizer
        self.stats = EngineStats()
        self.experts: list[str] = list(solver.mix.experts)

    def prompt_tokens(self, prompt: Prompt) -> int:
        backend = self.solver.backend
        text = backend.render(prompt)
        return len(self.tokenizer(text, add_special_tokens=isinstance(prompt, str))["input_ids"])

    def context_length(self) -> int | None:
        cfg = self.solver.backend.model.config
        return getattr(cfg, "max_position_embeddings", None)

    def _gates(self, reqs: list[GenRequest]) -> torch.Tensor:
        g = self.solver.gates([r.prompt for r in reqs])
        mix = self.solver.mix
        for i, r in enumerate(reqs):
            if r.experts == UNIFORM:
                g[i] = mix.uniform_gates(1)[0].to(g.device)
            elif r.experts is not None:
                g[i] = mix.expert_gates(1, self.experts.index(r.experts))[0].to(g.device)
        return g

    def run(self, reqs: list[GenRequest]) -> list[Completion | RowError]:
        """Completions in request order, or a RowError for a request that failed on its own;
        each completion carries meta["gates"] ({expert: weight})."""
        with self.stats.lock:
            self.stats.batches.append(len(reqs))
        out: list[Completion | RowError | None] = [None] * len(reqs)
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(reqs):
            groups.setdefault(sampling_key(r.sampling), []).append(i)
        for idx in groups.values():
            group = [reqs[i] for i in idx]
            streams = self._streams(group)
            try:
                done = self._generate(group, streams)
            except Exception as e:  # noqa: BLE001 - whatever it was, it fails only its own rows
                if len(group) == 1:
                    out[idx[0]] = RowError(e)
                    continue
                log.warning("a batch of %d rows failed (%s); each is tried alone", len(group), e)
                for i, r, stream in zip(idx, group, streams, strict=True):
                    if stream is not None and stream.sent:  # streamed text cannot be taken back
                        out[i] = RowError(e)
                        continue
                    try:
                        out[i] = self._generate([r], self._streams([r]))[0]
                    except Exception as alone:  # noqa: BLE001
                        out[i] = RowError(alone)
                continue
            for i, c in zip(idx, done, strict=True):
                out[i] = c
        return out  # type: ignore[return-value]

    def _streams(self, group: list[GenRequest]) -> list[TextStream | None]:
        stop = group[0].sampling.stop
        return [TextStream(self.tokenizer, stop, r.on_text) if r.on_text else None for r in group]

    def _generate(
        self, group: list[GenRequest], streams: list[TextStream | None]
    ) -> list[Completion]:
        """One `generate` call for requests that share sampling settings."""
        budgets = [r.sampling.max_tokens for r in group]
        sampling = replace(group[0].sampling, max_tokens=max(budgets), seed=None)

        def on_token(row: int, tok: int) -> None:
            if streams[row] is not None:
                streams[row].push(tok)

        done = self.solver.generate(
            [r.prompt for r in group],
            sampling,
            gates=self._gates(group),
            row_max_tokens=budgets,
            on_token=on_token if any(streams) else None,
            seeds=[r.sampling.seed for r in group],
        )
        with self.stats.lock:
            self.stats.generate_calls += 1
        for c, stream in zip(done, streams, strict=True):
            if stream is not None:
                stream.finish(c.text)
        return done
