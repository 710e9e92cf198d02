"""Bad input, as a careless or hostile user writes it: configs, problem files, run dirs, model
paths and job flags. Each case must end in one line naming the input and the fix (exit 2 for
a job), with bounded time and memory, and keep what was good or already done.

The tables are the fuzz suite: a case is (what the user wrote, what the error must say)."""

from __future__ import annotations

import json
import os
import random
import resource
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from bdc_ray.config import ConfigError, load_config, save_config

ROOT = Path(__file__).resolve().parents[1]
GB = 2**30


def _alias_bomb(indent: str, levels: int = 9) -> str:
    """The billion-laughs YAML: 9 aliases of 9 aliases, `levels` deep (9**levels values)."""
    lines = [f"{indent}a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels + 1):
        lines.append(f"{indent}a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


# (file text, substring of the error); every one is refused by load_config with a ConfigError
BAD_CONFIGS = [
    ("", "is empty"),
    ("# only a comment\n", "is empty"),
    ("- 1\n", "mapping at top level"),
    ("search: [1, 2\n", "not valid YAML"),
    ("eval:\n  timeout_s: .inf\n", "eval.timeout_s: Input should be a finite number"),
    ("eval:\n  timeout_s: .nan\n", "eval.timeout_s: Input should be a finite number"),
    ("eval:\n  timeout_s: 1.0e+300\n", "eval.timeout_s: Input should be less than or equal"),
    ("eval:\n  timeout_s: -1\n", "eval.timeout_s: Input should be greater than 0"),
    ("serve:\n  solve_timeout_s: .inf\n", "serve.solve_timeout_s"),
    ("search:\n  gamma: .nan\n", "search.gamma: Input should be a finite number"),
    ("hypernet:\n  tune:\n    lr: [.inf, 1]\n", "hypernet.tune.lr.0"),
    ("agents: []\n", "agents: List should have at least 1 item"),
    ("models: {}\n", "base_model: unknown model"),
    ("models:\n  default:\n    options:\n" + _alias_bomb("      "), "aliases (*name) are expanded"),
    ("search:\n  rollouts:\n" + _alias_bomb("    "), "aliases (*name) are expanded"),
    ("a: " + "[" * 5000 + "]" * 5000 + "\n", "nested more than 64 levels"),
    ("search:\n  rollouts: '" + "x" * 3_000_000 + "'\n", "larger than 1048576 bytes"),
    ("data:\n  max_prompt_bytes: 0\n", "data.max_prompt_bytes"),
]


@pytest.mark.parametrize(
    "text,needle", BAD_CONFIGS, ids=[f"config{i}" for i in range(len(BAD_CONFIGS))]
)
def test_a_bad_config_file_is_refused_naming_the_problem(tmp_path, text, needle):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert needle in msg, msg
    assert len(msg) < 600  # never the expanded or the whole value


def test_a_config_file_that_is_not_utf8_names_the_line(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_bytes(b"seed: 1\nsearch:\n  c: \xff\xfe\n")
    with pytest.raises(ConfigError, match=r"c.yaml, line 3: not UTF-8"):
        load_config(p)


def test_a_folder_given_as_config_is_named(tmp_path):
    with pytest.raises(ConfigError, match="is a folder; give --config a YAML file"):
        load_config(tmp_path)


def test_a_long_bad_value_is_shown_cut_short(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("search:\n  rollouts: '" + "y" * 500_000 + "'\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "search.rollouts" in str(e.value) and len(str(e.value)) < 300


def test_an_override_holding_a_deep_value_is_refused_naming_the_key():
    deep = "[" * 200 + "]" * 200
    with pytest.raises(ConfigError, match="override models.default.options: .*nested more than"):
        load_config(None, [f"models.default.options={deep}"])
    assert load_config(None, ["models.default.options={a: [1, 2]}"])  # a small one is fine


def test_config_limits_are_set_by_environment_variables(tmp_path, monkeypatch):
    p = tmp_path / "c.yaml"
    p.write_text("search:\n  rollouts: 4\n" + "#" * 2000 + "\n")
    assert load_config(p).search.rollouts == 4
    monkeypatch.setenv("BDC_CONFIG_MAX_BYTES", "1000")
    with pytest.raises(ConfigError, match="larger than 1000 bytes"):
        load_config(p)
    monkeypatch.setenv("BDC_CONFIG_MAX_BYTES", "lots")
    with pytest.raises(ConfigError, match="BDC_CONFIG_MAX_BYTES='lots': expected a positive"):
        load_config(p)


def test_aliases_within_the_bound_still_work(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(
        "models:\n  default: &m {path: tiny-random-llama}\n  other: *m\n"
        "agents:\n  - {name: a, model: other}\n"
    )
    cfg = load_config(p)
    assert cfg.models["other"].path == "tiny-random-llama"


def test_operational_limits_leave_stage_fingerprints_alone():
    from bdc_ray.pipeline.stages import STAGES

    base = load_config(None)
    raised = load_config(None, ["data.max_prompt_bytes=999999", "data.max_row_bytes=99999999"])
    assert [s.fingerprint(base) for s in STAGES] == [s.fingerprint(raised) for s in STAGES]
    other = load_config(None, ["data.split_seed=3"])
    assert STAGES[0].fingerprint(base) != STAGES[0].fingerprint(other)


def _peak_script(body: str) -> str:
    """A Python program that runs `body` after its imports and prints JSON: the growth of its
    peak RSS (VmHWM) over the idle process, in bytes, and the seconds `body` took."""
    return textwrap.dedent(
        """
        import json, sys, time
        def hwm():
            for line in open("/proc/self/status"):
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        {imports}
        idle = hwm()
        t0 = time.monotonic()
        try:
            {body}
            outcome = "ok"
        except BaseException as e:
            outcome = type(e).__name__ + ": " + str(e)[:300]
        print(json.dumps({{"grew": hwm() - idle, "seconds": time.monotonic() - t0,
                           "outcome": outcome}}))
        """
    )


def _run_bounded(imports: str, body: str, limit_gb: float = 3.0, timeout: float = 120) -> dict:
    """Run in a child limited to `limit_gb` of address space on top of its start, so the old,
    unbounded behaviour fails the test instead of swapping the machine."""
    script = _peak_script(body).format(imports=imports, body=body.replace("\n", "\n    "))

    def limit():
        soft = int(limit_gb * GB) + 2 * GB
        resource.setrlimit(resource.RLIMIT_AS, (soft, soft))

    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout,
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, preexec_fn=limit,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_alias_bomb_is_refused_fast_in_bounded_memory(tmp_path):
    p = tmp_path / "bomb.yaml"
    p.write_text("models:\n  default:\n    options:\n" + _alias_bomb("      "))
    out = _run_bounded(
        "from bdc_ray.config import load_config, save_config",
        f"save_config(load_config({str(p)!r}), {str(tmp_path / 'out.yaml')!r})",
    )
    print("alias bomb:", out)
    assert out["outcome"].startswith("ConfigError") and "aliases" in out["outcome"], out
    assert out["grew"] < 1 * GB and out["seconds"] < 5, out


def test_a_config_error_in_a_job_is_one_line_and_exit_2(tmp_path):
    p = tmp_path / "bomb.yaml"
    p.write_text("models:\n  default:\n    options:\n" + _alias_bomb("      "))
    proc = subprocess.run(
        [sys.executable, "jobs/explore.py", "--config", str(p), "--run-dir", str(tmp_path / "r")],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1 and "aliases (*name) are expanded" in proc.stderr
    assert not (tmp_path / "r").exists()


def _random_config(rng: random.Random) -> str:
    """A malformed config: a real key with a wrong value, or a wrong key, or broken YAML."""
    keys = ["search.rollouts", "eval.timeout_s", "data.test_fraction", "serve.port",
            "agents.0.temperature", "experts.lr", "hypernet.tau", "cluster.k"]  # fmt: skip
    bad_values = ["-1", ".inf", "-.inf", ".nan", "'many'", "[1, 2]", "{a: 1}", "1e999", "0"]
    choice = rng.randrange(3)
    if choice == 0:
        section, _, key = rng.choice(keys).partition(".")
        if section == "agents":
            return f"agents:\n  - name: a\n    temperature: {rng.choice(bad_values[:5])}\n"
        return f"{section}:\n  {key}: {rng.choice(bad_values)}\n"
    if choice == 1:
        return f"{rng.choice(['serch', 'search.x', 'evals'])}: 1\n"
    return rng.choice(["a: [1\n", "a: {b\n", "\t- x\n", "a: &x 1\nb: *y\n", "? [\n"])


def test_generated_malformed_configs_all_fail_with_a_config_error(tmp_path):
    rng = random.Random(21)
    p = tmp_path / "c.yaml"
    refused = 0
    for _ in range(120):
        text = _random_config(rng)
        p.write_text(text)
        try:
            cfg = load_config(p)
        except ConfigError as e:
            refused += 1
            assert str(e) and "Traceback" not in str(e)
            continue
        # accepted: only a value that really is valid there (e.g. cluster.k: 0 is not)
        save_config(cfg, tmp_path / "out.yaml")
        assert yaml.safe_load((tmp_path / "out.yaml").read_text())
    assert refused > 100


# ---------------------------------------------------------------- problem files

GOOD = {
    "task_id": "ok/1",
    "prompt": "def one():\n",
    "entry_point": "one",
    "test": "def check(candidate):\n    assert candidate() == 1\n",
}


def _row(**changes) -> bytes:
    return (json.dumps({**GOOD, **changes}) + "\n").encode()


# (bytes of one line, field named, substring of the message); each sits between two good rows
BAD_ROWS = [
    (b'{"task_id": "x", "prompt": "\xff\xfe", "entry_point": "f"}\n', "(row)", "not UTF-8 at byte"),
    (b"\xef\xbb\xbf" + _row(task_id="bom")[:-1] + b"\x80\n", "(row)", "not UTF-8"),
    (b"[" * 100_000 + b"]" * 100_000 + b"\n", "(row)", "nested too deeply"),
    (_row(task_id="big", prompt="x" * 70_000), "prompt", "more than data.max_prompt_bytes"),
    (_row(task_id="wide", prompt="\u00e9" * 40_000), "prompt", "80000 bytes"),
    (b'{"task_id": "t"' + b" " * 17 * 2**20 + b"}\n", "(row)", "longer than 16777216 bytes"),
    (b"null\n", "(row)", "must be a JSON object"),
    (b'"just a string"\n', "(row)", "must be a JSON object"),
    (b'{"task_id": 1e999999}\n', "problem_id", "missing"),
    (_row(task_id="", prompt=""), "task_id", "non-empty string"),
]


@pytest.mark.parametrize(
    "line,field,needle", BAD_ROWS, ids=[f"row{i}" for i in range(len(BAD_ROWS))]
)
def test_a_bad_row_is_named_by_file_and_line_and_the_good_rows_load(tmp_path, line, field, needle):
    from bdc_ray.data import load_jsonl

    p = tmp_path / "p.jsonl"
    p.write_bytes(_row(task_id="first") + line + _row(task_id="last"))
    problems, errors = load_jsonl(p)
    assert [x.id for x in problems] == ["first", "last"]
    assert len(errors) == 1 and errors[0].line == 2 and errors[0].field == field, errors
    assert needle in str(errors[0]) and str(errors[0]).startswith(f"{p}:2:")
    assert len(str(errors[0])) < 300  # never the row itself


@pytest.mark.parametrize(
    "content,needle",
    [(None, "does not exist"), (b"", "is empty"), (b"\n  \n", "is empty"),
     (b"{bad\n", "no usable problem"), ("folder", "is a folder")],
    ids=["missing", "empty", "blank", "no-good-row", "folder"],
)  # fmt: skip
def test_an_unusable_problem_file_fails_as_a_whole_naming_it(tmp_path, content, needle):
    from bdc_ray.config import DataConfig
    from bdc_ray.data import ProblemLoadError, load_problems

    p = tmp_path / "p.jsonl"
    if content == "folder":
        p.mkdir()
    elif content is not None:
        p.write_bytes(content)
    with pytest.raises(ProblemLoadError, match=needle) as e:
        load_problems(DataConfig(source="jsonl", path=str(p)))
    assert str(p) in str(e.value)


def test_a_gzipped_problem_file_with_a_bad_row_keeps_the_rest(tmp_path):
    import gzip

    from bdc_ray.data import load_jsonl

    p = tmp_path / "p.jsonl.gz"
    with gzip.open(p, "wb") as fh:
        fh.write(_row(task_id="a") + b"\xff\n" + _row(task_id="b"))
    problems, errors = load_jsonl(p)
    assert [x.id for x in problems] == ["a", "b"] and errors[0].line == 2
    broken = tmp_path / "broken.jsonl.gz"
    broken.write_bytes(p.read_bytes()[:30])
    from bdc_ray.data import ProblemLoadError

    with pytest.raises(ProblemLoadError, match="cannot be read"):
        load_jsonl(broken)


def test_row_limits_come_from_the_data_config(tmp_path):
    from bdc_ray.config import DataConfig
    from bdc_ray.data import load_problems

    p = tmp_path / "p.jsonl"
    p.write_bytes(_row(task_id="short") + _row(task_id="long", prompt="y" * 3000))
    cfg = DataConfig(source="jsonl", path=str(p), max_prompt_bytes=2000)
    assert [x.id for x in load_problems(cfg)] == ["short"]
    cfg = DataConfig(source="jsonl", path=str(p), max_row_bytes=2000)
    assert [x.id for x in load_problems(cfg)] == ["short"]
    assert len(load_problems(DataConfig(source="jsonl", path=str(p)))) == 2


def _random_row(rng: random.Random) -> bytes:
    """A malformed row: a good one with a field broken, cut short, or bytes thrown in."""
    row = dict(GOOD, task_id=f"r{rng.randrange(10**9)}")
    choice = rng.randrange(5)
    if choice == 0:
        field = rng.choice(["task_id", "prompt", "entry_point", "test"])
        row[field] = rng.choice(
            [None, 3, [], "", {"x": 1}, *(["x y"] if field == "entry_point" else [])]
        )
    elif choice == 1:
        del row[rng.choice(["prompt", "entry_point", "test"])]
    elif choice == 2:
        text = json.dumps(row)
        return text[: rng.randrange(1, len(text) - 1)].encode() + b"\n"
    elif choice == 3:
        raw = bytearray(json.dumps(row).encode())
        raw[rng.randrange(len(raw))] = rng.choice([0x80, 0xC3, 0xFF])
        return bytes(raw) + b"\n"
    else:
        row["test"] = "def check(candidate):\n    " + rng.choice(["pass", "x = (", "return 1"])
    return (json.dumps(row) + "\n").encode()


def test_generated_malformed_rows_are_each_reported_and_the_good_ones_kept(tmp_path):
    from bdc_ray.data import load_jsonl

    rng = random.Random(21)
    lines, good_ids = [], []
    for i in range(300):
        if i % 3 == 0:
            good_ids.append(f"good/{i}")
            lines.append(_row(task_id=f"good/{i}"))
        else:
            lines.append(_random_row(rng))
    p = tmp_path / "p.jsonl"
    p.write_bytes(b"".join(lines))
    problems, errors = load_jsonl(p)
    assert [x.id for x in problems] == good_ids
    assert len(errors) == 200 and all(str(e).startswith(f"{p}:") for e in errors)


def test_a_5mb_prompt_is_refused_fast_in_bounded_memory(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_bytes(_row(task_id="huge", prompt="def f():\n" + "x" * 5_000_000) + _row())
    out = _run_bounded(
        "from bdc_ray.data import load_jsonl",
        f"ps, errs = load_jsonl({str(p)!r})\n"
        "assert [x.id for x in ps] == ['ok/1'] and errs[0].field == 'prompt', errs",
    )
    print("5 MB prompt:", out)
    assert out["outcome"] == "ok", out
    assert out["grew"] < 1 * GB and out["seconds"] < 5, out


def _job(tmp_path: Path, *args: str, job: str = "jobs/explore.py") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, job, "--run-dir", str(tmp_path / "run"), *args],
        capture_output=True, text=True, timeout=180, cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--set", "models.smollm2.path=/no/such/model"], "models.smollm2.path: model '/no/such/model'"),
        (["--set", "models.smollm2.path=org/not-cached"], "models.smollm2.path: model 'org/not-cached' is not in the local"),
        (["--set", "data.source=jsonl", "--set", "data.path=/no/such.jsonl"], "problem file /no/such.jsonl does not exist"),
        (["--config", "/dev/null"], "is empty"),
        (["--run-dir", "/proc/version"], "run dir /proc/version is a file"),
        (["--run-dir", "/proc/no/run"], "run dir /proc/no/run cannot be written"),
    ],
    ids=["model-path", "hub-id-offline", "problems-missing", "empty-config", "rundir-file", "rundir-unwritable"],
)  # fmt: skip
def test_a_job_given_bad_input_says_so_in_one_line_and_exits_2(tmp_path, args, needle):
    t0 = time.monotonic()
    proc = _job(tmp_path, *args)
    assert proc.returncode == 2, proc.stderr[-3000:]
    err = [line for line in proc.stderr.splitlines() if " INFO " not in line]
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert time.monotonic() - t0 < 60  # before Ray starts: no stage ran


# ---------------------------------------------------------------- the sandbox CLI


def _sandbox(tmp_path: Path, *args: str, program: bytes = b"def add(a, b):\n    return a + b\n",
             tests: bytes = b'["assert add(1, 2) == 3"]') -> subprocess.CompletedProcess:  # fmt: skip
    (tmp_path / "prog.py").write_bytes(program)
    (tmp_path / "tests.json").write_bytes(tests)
    argv = ["--program", str(tmp_path / "prog.py"), "--tests", str(tmp_path / "tests.json"),
            "--entry-point", "add", *args]  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "bdc_ray.sandbox", "run", *argv],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip


# (extra flags, program bytes, tests bytes, substring of the one error line)
BAD_SANDBOX = [
    (["--timeout", "-1"], None, None, "--timeout: '-1': give seconds per test, more than 0"),
    (["--timeout", "0"], None, None, "more than 0 and at most 3600"),
    (["--timeout", "nan"], None, None, "--timeout: 'nan'"),
    (["--timeout", "inf"], None, None, "--timeout: 'inf'"),
    (["--timeout", "1e9"], None, None, "at most 3600"),
    (["--timeout", "soon"], None, None, "'soon' is not a number of seconds"),
    (["--max-bytes", "-5"], None, None, "--max-bytes: '-5': give a positive number"),
    (
        [],
        b"def add(a, b):\n    return '\xff'\n",
        None,
        "program",
    ),
    ([], None, b'["assert add(1, 2) == 3", "\xe9"]', "tests file"),
    ([], b"x = 1\n" * 300_000, None, "is larger than 1048576 bytes"),
    (["--max-bytes", "10"], None, None, "is larger than 10 bytes; raise --max-bytes"),
    ([], None, b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ([], None, b'{"entry_point": 5, "tests": ["assert 1"]}', "entry_point must be a function"),
]


@pytest.mark.parametrize("flags,program,tests,needle", BAD_SANDBOX, ids=[f"sandbox{i}" for i in range(len(BAD_SANDBOX))])  # fmt: skip
def test_the_sandbox_cli_refuses_bad_flags_and_files_with_exit_2(tmp_path, flags, program, tests, needle):  # fmt: skip
    kw = {k: v for k, v in (("program", program), ("tests", tests)) if v is not None}
    proc = _sandbox(tmp_path, *flags, **kw)
    assert proc.returncode == 2, (proc.stdout, proc.stderr[-2000:])
    last = proc.stderr.strip().splitlines()[-1]
    assert "error: " in last and needle in last, proc.stderr
    if program is not None and b"\xff" in program:
        assert "line 2: not UTF-8" in last
    assert "Traceback" not in proc.stderr and len(proc.stderr) < 2000


def test_the_sandbox_cli_still_passes_a_correct_program_within_its_limits(tmp_path):
    proc = _sandbox(tmp_path, "--timeout", "5", "--max-bytes", "4096", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["passed"] is True


def test_a_pipeline_run_skips_a_5mb_prompt_and_scores_the_other_problems(ray_session, tmp_path):
    """The 5 MB prompt had reached the model actor (21.7 GB, killed again and again) and the
    job died without the other problems' results."""
    from tests.helpers import pipeline

    rows = [_row(task_id="huge", prompt="def huge():\n" + "x" * 5_000_000)]
    rows += [_row(task_id=f"ok/{i}", prompt=f"def one():\n    # {i}\n") for i in range(4)]
    p = tmp_path / "p.jsonl"
    p.write_bytes(b"".join(rows))
    run = tmp_path / "run"
    results = pipeline.full(
        ["--run-dir", str(run), "--stages", "zero_shot", "--set", "data.source=jsonl",
         "--set", f"data.path={p}", "--set", "models.smollm2.path=tiny-random-llama",
         "--set", "eval.max_tokens=8"]
    )  # fmt: skip
    m = results["methods"]["base_zero_shot"]
    assert m["n"] == 2  # half of the 4 usable problems are the test split
    assert set(results["problems"]) <= {f"ok/{i}" for i in range(4)}
    assert len(results["problems"]) == 2


def test_a_prompt_that_fills_the_context_is_answered_alone_without_reaching_the_model(
    tiny_backend,
):
    from bdc_ray.llm.base import Sampling

    context = tiny_backend.model.config.max_position_embeddings
    long = "word " * (context + 100)
    s = Sampling(max_tokens=4)
    out = tiny_backend.generate(["def f():", long, "x = "], s)
    assert out[1].finish_reason == "length" and out[1].text == "" and out[1].completion_tokens == 0
    assert out[1].prompt_tokens > context and "fills the model's context" in out[1].meta["error"]
    for i, p in ((0, "def f():"), (2, "x = ")):
        assert out[i].text == tiny_backend.generate([p], s)[0].text
