import json
import subprocess
import sys


def run(*args):
    return subprocess.run(
        [sys.executable, "-m", "bdc_ray.sandbox", "run", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_function_tests_file(tmp_path):
    prog = tmp_path / "p.py"
    prog.write_text("def add(a, b):\n    return a + b\n")
    tests = tmp_path / "t.json"
    tests.write_text(
        json.dumps(
            {"entry_point": "add", "tests": ["assert add(1, 2) == 3", "assert add(0, 0) == 1"]}
        )
    )
    r = run("--program", str(prog), "--tests", str(tests), "--json")
    assert r.returncode == 1
    out = json.loads(r.stdout)
    assert out["passed"] is False and out["pass_rate"] == 0.5 and out["status"] == "failed"
    assert [t["status"] for t in out["tests"]] == ["passed", "failed"]
    assert "got: 0" in out["tests"][1]["feedback"]


def test_cli_humaneval_problem_and_stdio(tmp_path):
    from bdc_ray.data import load_humaneval

    p = load_humaneval()[2]
    prog = tmp_path / "p.py"
    prog.write_text(p.prompt + p.canonical_solution)
    r = run("--program", str(prog), "--problem-id", p.id, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["passed"] is True
    prog.write_text("print(sum(map(int, input().split())))\n")
    tests = tmp_path / "io.json"
    tests.write_text(
        json.dumps([{"input": "1 2\n", "output": "3\n"}, {"input": "2 2\n", "output": "4"}])
    )
    r = run("--program", str(prog), "--tests", str(tests), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["pass_rate"] == 1.0


def test_cli_bad_input_is_named(tmp_path):
    prog = tmp_path / "p.py"
    prog.write_text("x = 1\n")
    r = run("--program", str(prog), "--problem-id", "HumanEval/999")
    assert r.returncode == 2 and "unknown problem id" in r.stderr
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    r = run("--program", str(prog), "--tests", str(bad))
    assert r.returncode == 2 and "is not JSON" in r.stderr
    bad.write_text(json.dumps(["assert f(1) == 1"]))
    r = run("--program", str(prog), "--tests", str(bad))
    assert r.returncode == 2 and "--entry-point" in r.stderr
    r = run("--program", str(tmp_path / "missing.py"), "--problem-id", "HumanEval/0")
    assert r.returncode == 2 and "cannot read program" in r.stderr
