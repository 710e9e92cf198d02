import json

import pytest

from bdc_ray.disentangle.examples import (
    ExampleError,
    example_text,
    load_examples,
    prompt_text,
    read_examples,
)


def write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def row(i, kind="p2c", pid=None):
    return {
        "id": f"P/{i}/{kind}",
        "problem_id": pid or f"P/{i}",
        "kind": kind,
        "messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": f"task {i}"},
        ],
        "response": f"answer {i}",
    }


@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        ("{not json", "2: not valid JSON"),
        (
            {"id": "x", "messages": [], "response": "r"},
            "2: field 'messages' must be a non-empty list",
        ),
        ({"id": "x", "response": "r"}, "2: field 'messages' is missing"),
        ({"id": "x", "messages": [{"role": "user"}], "response": "r"}, "messages[0] needs"),
        (
            {"id": "x", "messages": [{"role": "user", "content": "c"}], "response": " "},
            "'response'",
        ),
        ([1, 2], "expected a JSON object"),
    ],
)
def test_malformed_rows_name_file_line_and_field(tmp_path, bad, needle):
    write(tmp_path / "p2c.jsonl", [row(0), bad])
    with pytest.raises(ExampleError, match=r"p2c\.jsonl:2: ") as e:
        read_examples(tmp_path / "p2c.jsonl")
    assert needle in str(e.value) and str(tmp_path / "p2c.jsonl") in str(e.value)


def test_load_reads_the_chosen_kinds_and_prefers_search_over_reference(tmp_path, reference_rows):
    write(tmp_path / "p2c.jsonl", [row(0, pid="HumanEval/0")])
    write(tmp_path / "p2t.jsonl", [row(1, "p2t")])
    from bdc_ray.config import DataConfig
    from bdc_ray.data import load_problems

    probs = load_problems(DataConfig())[:3]
    rows = load_examples(tmp_path, ["p2c"], probs)
    assert [r["id"] for r in rows] == ["P/0/p2c", "HumanEval/1/ref", "HumanEval/2/ref"]
    assert [r["source"] for r in rows] == ["search", "reference", "reference"]
    assert load_examples(tmp_path, ["p2t", "t2c"])[0]["kind"] == "p2t"  # t2c.jsonl absent: fine
    ref = rows[1]
    assert (
        ref["response"].startswith("```python\n") and "def separate_paren_groups" in ref["response"]
    )


def test_texts(reference_rows):
    r = reference_rows[0]
    assert "sys" not in prompt_text(row(3)) and prompt_text(row(3)) == "task 3"
    assert example_text(r).startswith(prompt_text(r)) and example_text(r).endswith(r["response"])


def test_disentangle_job_names_a_bad_row_and_exits_2(tmp_path):
    import subprocess
    import sys

    (tmp_path / "sft").mkdir()
    write(
        tmp_path / "sft" / "p2c.jsonl",
        [row(0), {"id": "x", "messages": [{"role": "user", "content": "a"}]}],
    )
    (tmp_path / "clusters").mkdir()
    (tmp_path / "clusters" / "meta.json").write_text('{"k": 3}')  # earlier output survives
    proc = subprocess.run(
        [sys.executable, "jobs/disentangle.py", "--run-dir", str(tmp_path),
         "--set", "cluster.reference_solutions=false"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert f"error: {tmp_path / 'sft' / 'p2c.jsonl'}:2: field 'response' is missing" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert (tmp_path / "clusters" / "meta.json").read_text() == '{"k": 3}'
