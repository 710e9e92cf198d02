"""Bad requests against the Serve app, as a careless or hostile client sends them: each gets a
4xx naming the field or the limit, fast and in bounded memory, while other clients' valid
requests, batched with them, all succeed. And in-process: a request that fails inside
generation fails alone, the rest of its batch is answered."""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path

import pytest
import requests

from bdc_ray.config import ServeConfig
from bdc_ray.llm.base import Sampling
from tests.helpers.serving import serve_app

MODEL = "bdc-customized"
GB = 2**30
MAX_BODY = 2 * 2**20
CHAT = "/v1/chat/completions"
DONE = "/v1/completions"


@pytest.fixture(scope="module")
def server(ray_session, solver_run):
    cfg = ServeConfig(
        num_cpus=0.5,
        max_batch_size=8,
        batch_wait_timeout_s=0.2,
        max_tokens_limit=64,
        max_body_bytes=MAX_BODY,
        max_prompt_bytes=100_000,
    )
    with serve_app(solver_run, cfg, "bad") as url:
        yield url


def _chat(**extra) -> bytes:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    return json.dumps({**body, **extra}).encode()


def _nested(levels: int) -> bytes:
    return b'{"model": "%s", "prompt": ' % MODEL.encode() + b"[" * levels + b"]" * levels + b"}"


# (route, raw body, status, substring of the error message or param); the body is sent as is
BAD = [
    ("seed-huge", CHAT, _chat(seed=10**30), 400, "seed"),
    ("seed-negative-huge", CHAT, _chat(seed=-(10**30)), 400, "seed"),
    ("seed-float", CHAT, _chat(seed=1.5), 400, "seed"),
    ("temperature-nan", CHAT, _chat()[:-1] + b', "temperature": NaN}', 400, "temperature"),
    ("top-p-infinity", CHAT, _chat()[:-1] + b', "top_p": Infinity}', 400, "top_p"),
    ("penalty-nan", CHAT, _chat()[:-1] + b', "frequency_penalty": NaN}', 400, "frequency_penalty"),
    ("n-huge", DONE, json.dumps({"model": MODEL, "prompt": "x", "n": 10**30}).encode(), 400, "n"),
    ("max-tokens-huge", CHAT, _chat(max_tokens=10**30), 400, "max_tokens"),
    ("nested-10000", DONE, _nested(10_000), 400, "nested too deeply"),
    ("nested-100", DONE, _nested(100), 400, "prompt"),
    ("int-5000-digits", CHAT, _chat()[:-1] + b', "seed": ' + b"9" * 5000 + b"}", 400, "malformed JSON"),
    ("not-utf8", CHAT, b'{"model": "\xff\xfe"}', 400, "malformed JSON"),
    ("empty", CHAT, b"", 400, "body"),
    ("array", CHAT, b"[1, 2]", 400, "body"),
    ("prompt-bytes", DONE, json.dumps({"model": MODEL, "prompt": "x" * 200_000}).encode(), 400, "serve.max_prompt_bytes"),
    ("chat-bytes", CHAT, _chat(messages=[{"role": "user", "content": "y" * 60_000}] * 2), 400, "serve.max_prompt_bytes"),
    ("body-3mb", DONE, json.dumps({"model": MODEL, "prompt": "z" * 3 * 2**20}).encode(), 413, "serve.max_body_bytes"),
    ("solve-seed", "/v1/solve", json.dumps({"problem": "def f():", "seed": 2**64}).encode(), 400, "seed"),
]  # fmt: skip


def _post(server: str, path: str, body: bytes, timeout: float = 60) -> requests.Response:
    return requests.post(
        server + path, data=body, headers={"Content-Type": "application/json"}, timeout=timeout
    )


@pytest.mark.parametrize("path,body,status,needle", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_a_bad_request_gets_a_4xx_naming_the_field_or_the_limit(server, path, body, status, needle):
    r = _post(server, path, body)
    assert r.status_code == status, r.text[:2000]
    err = r.json()["error"]
    assert needle in err["message"] + str(err.get("param")), err
    assert len(r.content) < 2000  # never the bad value itself


def _pids(fragment: str) -> list[int]:
    """Processes whose title (Ray sets it per actor) holds `fragment`."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if fragment in (d / "cmdline").read_bytes().decode(errors="replace"):
                    out.append(int(d.name))
            except OSError:
                continue
    return out


def _hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for {pid}")


def test_a_20mb_body_is_refused_fast_and_neither_proxy_nor_replica_grows(server):
    pids = _pids("ServeReplica:bad") + _pids("ProxyActor")
    assert len(pids) >= 2, pids
    _post(server, CHAT, _chat())  # warm: the idle process has served a request
    before = {p: _hwm(p) for p in pids}
    body = json.dumps({"model": MODEL, "prompt": "w" * 20 * 2**20}).encode()
    t0 = time.monotonic()
    r = _post(server, DONE, body)
    took = time.monotonic() - t0
    grew = {p: _hwm(p) - before[p] for p in pids}
    print(f"20 MB body: {took:.2f} s, peak RSS growth per process: {grew}")
    assert r.status_code == 413 and "serve.max_body_bytes" in r.json()["error"]["message"]
    assert took < 5 and max(grew.values()) < 1 * GB
    # the same without a Content-Length: refused once that much has arrived
    chunks = (b"x" * 2**20 for _ in range(20))
    r = requests.post(server + DONE, data=chunks, headers={"Content-Type": "application/json"},
                      timeout=60)  # fmt: skip
    assert r.status_code == 413, r.text[:500]
    assert _post(server, CHAT, _chat()).status_code == 200  # and it still answers


def _random_body(rng: random.Random) -> bytes:
    """A malformed chat body: a good one with a field made wrong, cut short, or bytes spoilt."""
    body = json.loads(_chat(temperature=0.5, seed=3))
    choice = rng.randrange(4)
    if choice == 0:
        field = rng.choice(["seed", "temperature", "top_p", "max_tokens", "n", "messages", "stop"])
        body[field] = rng.choice([10**30, -1, "x", None, [], {}, 1e308, [None]])
        if field == "seed" and body[field] is None:
            body[field] = "x"
        if field == "stop" and body[field] is None:
            body[field] = [""]
        return json.dumps(body).encode()
    raw = json.dumps(body).encode()
    if choice == 1:
        return raw[: rng.randrange(1, len(raw) - 1)]
    if choice == 2:
        spoilt = bytearray(raw)
        spoilt[rng.randrange(len(spoilt))] = rng.choice(b"\xff{[\x00")
        return bytes(spoilt)
    return json.dumps({**body, rng.choice(["temprature", "seeds", "logit_bias"]): 1}).encode()


def test_valid_clients_all_succeed_while_another_sends_bad_requests(server):
    """Closed loop: 3 clients send valid requests back to back (one streams) while a fourth
    sends the table above and generated malformed bodies; every valid one gets its answer."""
    stop = threading.Event()
    good: list[int] = []
    bad: list[tuple[str, int, int]] = []
    failures: list[str] = []

    def valid(i: int) -> None:
        n = 0
        while not stop.is_set() or n < 3:
            stream = i == 0 and n % 2 == 1
            body = _chat(messages=[{"role": "user", "content": f"task {i}.{n}"}], seed=n,
                         temperature=0.7, stream=stream)  # fmt: skip
            r = _post(server, CHAT, body, timeout=120)
            ok = r.status_code == 200 and (b"[DONE]" in r.content if stream else
                                           bool(r.json()["choices"][0]["message"]["content"]
                                                is not None))  # fmt: skip
            if ok and stream:
                ok = b"server_error" not in r.content
            (good if ok else failures).append(r.status_code if ok else r.text[:300])
            n += 1

    def hostile() -> None:
        rng = random.Random(21)
        cases = [(b[0], b[1], b[2], b[3]) for b in BAD if b[0] != "body-3mb"]
        while not stop.is_set():
            if rng.random() < 0.5:
                name, path, body, status = rng.choice(cases)
            else:
                name, path, body, status = "generated", CHAT, _random_body(rng), None
            r = _post(server, path, body, timeout=120)
            bad.append((name, status, r.status_code))

    threads = [threading.Thread(target=valid, args=(i,)) for i in range(3)]
    threads.append(threading.Thread(target=hostile))
    for t in threads:
        t.start()
    time.sleep(25)
    stop.set()
    for t in threads:
        t.join(timeout=180)
    assert not failures, failures[:5]
    assert len(good) >= 9 and len(bad) >= 20, (len(good), len(bad))
    for name, want, got in bad:
        assert (got == want) if want else (got in (200, 400, 404)), (name, want, got)
    assert not [b for b in bad if b[2] >= 500]
    health = requests.get(server + "/health", timeout=30).json()
    assert health["status"] == "ok" and health["batching"]["max_batch"] >= 2, health


# ---------------------------------------------------------------- in-process: the engine


class _Poisoned:
    """The real solver, except that a generate call holding `poison` fails, as a row whose
    value the backend cannot honour fails it (a seed torch refuses, a CUDA error)."""

    def __init__(self, solver, poison: str) -> None:
        self._solver, self.poison = solver, poison

    def __getattr__(self, name):
        return getattr(self._solver, name)

    def generate(self, prompts, sampling, **kw):
        if self.poison in prompts:
            raise ValueError("Overflow when unpacking long long")
        return self._solver.generate(prompts, sampling, **kw)


def test_a_request_that_fails_in_generation_fails_alone(solver):
    from bdc_ray.serve.engine import BatchEngine, GenRequest, RowError

    engine = BatchEngine(_Poisoned(solver, "POISON"))
    s = Sampling(max_tokens=6)
    other = Sampling(max_tokens=6, temperature=0.5, seed=1)
    prompts = ["def a():", "POISON", "def b():"]
    out = engine.run([GenRequest(p, s) for p in prompts] + [GenRequest("def c():", other)])
    assert isinstance(out[1], RowError) and "Overflow" in str(out[1].error)
    for i in (0, 2):
        alone = solver.generate([prompts[i]], s)[0]
        assert out[i].text == alone.text and out[i].finish_reason == alone.finish_reason
    # its own group (a row's seed is its request's seed): untouched
    assert out[3].text == solver.generate(["def c():"], other, seeds=[1])[0].text


def test_a_streamed_row_that_already_sent_text_is_not_generated_twice(solver):
    """Once a row's text has gone out, a retry would send it again: it fails instead."""
    from bdc_ray.serve.engine import BatchEngine, GenRequest, RowError

    class FailsAfterTokens(_Poisoned):
        def generate(self, prompts, sampling, **kw):
            if self.poison in prompts and len(prompts) > 1:
                on_token = kw["on_token"]
                for _ in range(4):  # the first row streams some text, then the call fails
                    on_token(0, self._solver.backend.tokenizer.encode("ok")[0])
                raise RuntimeError("device lost")
            return self._solver.generate(prompts, sampling, **kw)

    pieces: list[str] = []
    engine = BatchEngine(FailsAfterTokens(solver, "def z():"))
    s = Sampling(max_tokens=5)
    out = engine.run([GenRequest("def y():", s, on_text=pieces.append), GenRequest("def z():", s),
                      GenRequest("def x():", s)])  # fmt: skip
    assert pieces and isinstance(out[0], RowError)
    assert (
        not isinstance(out[2], RowError) and out[2].text == solver.generate(["def x():"], s)[0].text
    )
    assert not isinstance(out[1], RowError)  # alone, it does not fail
