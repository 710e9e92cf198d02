"""The training examples Disentangle reads: the Boost stage's `sft/*.jsonl`, optionally padded
with the train split's reference solutions (for models that solve too few problems in search)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..data.problems import Problem
from ..llm.prompts import direct_messages

REQUIRED = ("id", "messages", "response")


class ExampleError(ValueError):
    """A training-example file or row that cannot be used; the message names file, line, field."""


def _check_row(row: Any, where: str) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise ExampleError(f"{where}: expected a JSON object, got {type(row).__name__}")
    for key in REQUIRED:
        if key not in row:
            raise ExampleError(f"{where}: field {key!r} is missing")
    msgs = row["messages"]
    if not isinstance(msgs, list) or not msgs:
        raise ExampleError(f"{where}: field 'messages' must be a non-empty list of chat turns")
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or "role" not in m:
            raise ExampleError(f"{where}: messages[{i}] needs 'role' and a string 'content'")
    if not isinstance(row["response"], str) or not row["response"].strip():
        raise ExampleError(f"{where}: field 'response' must be a non-empty string")
    return row


def read_examples(path: str | Path) -> list[dict[str, Any]]:
    """Rows of one SFT file, each checked; a bad row raises naming file, line and field."""
    path = Path(path)
    rows = []
    with open(path) as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ExampleError(f"{where}: not valid JSON ({e.msg})") from None
            rows.append(_check_row(row, where))
    return rows


def reference_examples(problems: list[Problem]) -> list[dict[str, Any]]:
    """p2c examples from reference solutions (train split only), with the inference prompt."""
    out = []
    for p in problems:
        if not p.canonical_solution:
            continue
        code = p.canonical_solution
        if p.kind == "function":  # the reference is a body: answer with the whole function
            code = p.prompt + code
        out.append(
            {
                "id": f"{p.id}/ref",
                "problem_id": p.id,
                "kind": "p2c",
                "source": "reference",
                "messages": direct_messages(p),
                "response": f"```python\n{code.strip(chr(10))}\n```",
            }
        )
    return out


def load_examples(
    sft_dir: str | Path,
    kinds: list[str],
    reference: list[Problem] | None = None,
) -> list[dict[str, Any]]:
    """The examples Disentangle clusters and trains on, in a stable order, ids unique."""
    sft_dir = Path(sft_dir)
    rows: list[dict[str, Any]] = []
    for kind in kinds:
        path = sft_dir / f"{kind}.jsonl"
        if path.exists():
            for r in read_examples(path):
                rows.append({**r, "kind": r.get("kind", kind), "source": r.get("source", "search")})
    searched = {r.get("problem_id") for r in rows if r.get("kind") == "p2c"}
    for r in reference_examples(reference or []):
        if r["problem_id"] not in searched:  # a verified search trace beats the reference
            rows.append(r)
    seen: set[str] = set()
    for r in rows:
        if r["id"] in seen:
            raise ExampleError(f"duplicate example id {r['id']!r} in {sft_dir}")
        seen.add(r["id"])
    return rows


def example_text(row: dict[str, Any]) -> str:
    """What gets embedded: the example's full text, input (user turns) and output."""
    user = "\n\n".join(m["content"] for m in row["messages"] if m["role"] != "system")
    return f"{user}\n\n{row['response']}"


def prompt_text(row: dict[str, Any]) -> str:
    """The input alone (the hypernetwork sees only this at inference)."""
    return "\n\n".join(m["content"] for m in row["messages"] if m["role"] != "system")
