"""report.md and its plots from a run directory's files, including a partial run."""

import json

from bdc_ray.eval.report import gate_matrix, write_report
from bdc_ray.rundir import RunDir


def test_gate_matrix_groups_problems_by_their_nearest_cluster():
    gates = {
        "P/2": {"gates": {"cluster_0": 0.2, "cluster_1": 0.8}, "nearest_cluster": 1},
        "P/1": {"gates": {"cluster_0": 0.9, "cluster_1": 0.1}, "nearest_cluster": 0},
        "P/3": {"gates": {"cluster_0": 0.6, "cluster_1": 0.4}, "nearest_cluster": 0},
    }
    pids, experts, cats, w = gate_matrix(gates)
    assert pids == ["P/1", "P/3", "P/2"] and cats == [0, 0, 1]
    assert experts == ["cluster_0", "cluster_1"] and w[2] == [0.2, 0.8]


def test_report_of_a_partial_run_has_what_exists(tmp_path):
    run = RunDir(tmp_path)
    run.record_method("base_zero_shot", {"pass@1": 0.25, "pass_rate": 0.5, "n": 4}, {})
    run.record_method("customized", {"pass@1": 0.5, "pass_rate": 0.75, "n": 4}, {})
    run.record_method("full", {"pass@1": 0.0, "pass_rate": 0.1, "n": 4}, {})
    (tmp_path / "timings.json").write_text(
        json.dumps({"zero_shot": {"wall_s": 3.5, "skipped": False}})
    )
    (tmp_path / "eval" / "gates_customized.json").write_text(
        json.dumps({"P/1": {"gates": {"a": 0.3, "b": 0.7}, "nearest_cluster": 1}})
    )
    text = write_report(run).read_text()
    rows = [ln for ln in text.splitlines() if ln.startswith("| `")]
    # pipeline order: baselines first, the customised solver last
    assert [r.split("`")[1] for r in rows] == ["base_zero_shot", "full", "customized"]
    assert "| `customized` | 0.500 | 0.750 | 4 |" in text
    assert "| zero_shot | 3.5 |" in text
    assert "## Disentangle" not in text and "## Experts" not in text  # no such outputs yet
    for png in ("pass_at_1.png", "gates.png"):
        assert (tmp_path / "plots" / png).stat().st_size > 5000


def test_results_and_report_name_the_package_versions_of_the_run(tmp_path):
    from importlib import metadata

    run = RunDir(tmp_path)
    run.record_method("full", {"pass@1": 0.0, "pass_rate": 0.1, "n": 4}, {})
    versions = json.loads(run.results.read_text())["versions"]
    for name in ("torch", "ray", "transformers", "peft", "deepspeed"):
        assert versions[name] == metadata.version(name), name
    assert versions["python"].count(".") == 2
    text = write_report(run).read_text()
    assert "## Software" in text and f"ray {metadata.version('ray')}" in text


def test_report_rows_carry_intervals_and_a_comparison_with_zero_shot(tmp_path):
    from bdc_ray.eval.methods import record_answers

    run = RunDir(tmp_path)

    class Score:
        def __init__(self, ok):
            self.passed, self.pass_rate = ok, 1.0 if ok else 0.0

    from bdc_ray.data.problems import function_problem

    problems = [function_problem(f"P/{i}", "def f():\n    '''x'''\n", "f",
                                 "def check(candidate):\n    assert candidate() == 1\n")
                for i in range(8)]  # fmt: skip
    for method, solved in (("base_zero_shot", 1), ("full", 7)):
        record_answers(run, method, problems, ["x"] * 8,
                       scorer=lambda ps, _, k=solved: [Score(i < k) for i in range(len(ps))])  # fmt: skip
    text = write_report(run).read_text()
    assert "| `full` | 0.875 [0.529, 0.978] | 0.875 [" in text
    assert "### Against `base_zero_shot` on the problems both ran" in text
    assert "| `full` |" in text and "| full | 8 | 6 / 0 | +0.750 | 0.031 |" in text
