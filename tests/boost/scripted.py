"""Scripted agents and a scripted checker: the search's logic without any model."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from bdc_ray.llm.base import Completion


def steps_in(text: str, header: str) -> list[str]:
    if header not in text:
        return []
    block = text.split(header, 1)[1].split("\n\n", 1)[0]
    return [m.group(1) for m in re.finditer(r"^\d+\. (.*)$", block, re.M)]


@dataclass
class ScriptedLLM:
    """expand(agent, thoughts) -> list of (thought, prior) or raw text;
    code(agent, thoughts) -> pass rate (the checker reads it from the program);
    reflect(agent, thoughts) -> replacement thought."""

    expand: callable
    code: callable
    reflect: callable = lambda agent, thoughts: f"{agent}-fix({thoughts[-1]})"
    repair: callable = lambda agent, text: None
    calls: list = field(default_factory=list)
    prompts: list = field(default_factory=list)  # (agent, kind, the prompt's last message)

    async def generate(self, agent, prompts, sampling):
        out = []
        for p in prompts:
            text = p[-1]["content"] if isinstance(p, list) else p
            if "Propose" in text:
                thoughts = steps_in(text, "Solution steps so far:\n")
                ans = self.expand(agent, thoughts)
                body = (
                    ans
                    if isinstance(ans, str)
                    else json.dumps([{"thought": t, "Reasonableness": r} for t, r in ans])
                )
                kind = "expand"
            elif "Rewrite the following as a JSON" in text:
                body = self.repair(agent, text) or "still not json"
                kind = "repair"
            elif "Reflect on what went wrong" in text:
                thoughts = steps_in(text, "Solution steps:\n")
                body = json.dumps({"thought": self.reflect(agent, thoughts), "Reasonableness": 0.9})
                kind = "reflect"
            else:
                thoughts = steps_in(text, "Follow these steps:\n")
                rate = self.code(agent, thoughts)
                body = f"```python\ndef f():\n    return 1  # rate={rate}\n```"
                kind = "simulate"
            self.calls.append((agent, kind, sampling.temperature))
            self.prompts.append((agent, kind, text))
            out.append(Completion(body, 10, 5, "stop"))
        return out


@dataclass
class _T:
    status: str


@dataclass
class FakeResult:
    pass_rate: float
    status: str
    tests: list

    @property
    def passed(self):
        return self.pass_rate == 1.0

    def feedback(self, max_tests=3):
        return f"assert f() == 1 failed, rate {self.pass_rate}"


class RateChecker:
    """Reads `rate=x` from the program; `rate=dead` is a program that does not run."""

    def __init__(self):
        self.checked = []

    async def check(self, program, problem, tests):
        assert tests == "public"  # search never sees hidden tests
        self.checked.append(program)
        m = re.search(r"rate=([\w.]+)", program)
        if m.group(1) == "dead":
            return FakeResult(0.0, "error", [_T("error"), _T("error")])
        rate = float(m.group(1))
        statuses = ["passed" if rate == 1.0 else "failed"] * 2
        return FakeResult(rate, "passed" if rate == 1.0 else "failed", [_T(s) for s in statuses])
