"""The stage and method tables drive the pipeline: a row added there is run, skipped, timed and
ordered without touching any other code."""

import dataclasses
import json

import pytest

from bdc_ray import methods as methods_mod
from bdc_ray.config import Config
from bdc_ray.methods import Kind, Method, UnknownMethod
from bdc_ray.pipeline import STAGE_NAMES, STAGES, method_of, ordered_methods, run_pipeline
from bdc_ray.pipeline import stages as stages_mod
from bdc_ray.rundir import RunDir

CALLS: list[str] = []


def write_marker(cfg: Config, run: RunDir) -> dict:
    """A stage of the test's own: writes one file unless it exists for this seed."""
    CALLS.append("marker")
    path = run.root / "marker" / "out.json"
    if path.is_file() and json.loads(path.read_text())["seed"] == cfg.seed:
        return {}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"seed": cfg.seed}))
    return {}


def test_the_pipeline_runs_times_and_skips_exactly_the_stages_of_the_table(monkeypatch, tmp_path):
    marker = stages_mod.Stage(
        "marker", f"{__name__}:write_marker", ("marker/*.json",), ("seed",), "jobs/none.py", "x"
    )
    monkeypatch.setattr(stages_mod, "STAGES", (marker,))
    CALLS.clear()
    run = RunDir(tmp_path)
    _, timings = run_pipeline(Config(), run)
    assert CALLS == ["marker"] and set(timings) == {"marker"} and not timings["marker"]["skipped"]
    _, again = run_pipeline(Config(), run)
    assert again["marker"]["skipped"] and again["marker"]["wall_s"] == timings["marker"]["wall_s"]
    _, changed = run_pipeline(Config(seed=1), run)  # another config: the stage does its work
    assert not changed["marker"]["skipped"]
    assert (tmp_path / "report.md").is_file()
    with pytest.raises(KeyError, match="unknown stages"):
        run_pipeline(Config(), run, ["nope"])


def test_every_stage_entry_resolves_to_a_function_of_config_and_run_dir():
    import inspect

    assert STAGE_NAMES == tuple(s.name for s in STAGES)
    for st in STAGES:
        params = list(inspect.signature(st.function()).parameters)
        assert params[:2] == ["cfg", "run"], st.name
        assert st.fingerprint(Config()) == Config().fingerprint(*st.fingerprint_sections)


def test_methods_are_named_once_and_order_the_report(monkeypatch):
    assert method_of("cluster_12").kind is Kind.ADAPTER
    assert method_of("base_two_stage").kind is Kind.TWO_STAGE
    with pytest.raises(UnknownMethod, match="unknown method 'cluster_'"):
        method_of("cluster_")
    names = ["customized", "merged_ties_svd", "cluster_10", "cluster_2", "mcts", "full",
             "base_zero_shot", "merged_dare_svd", "base_two_stage"]  # fmt: skip
    assert ordered_methods(names) == ["base_zero_shot", "base_two_stage", "mcts", "full",
                                      "cluster_2", "cluster_10", "merged_dare_svd", "merged_ties_svd",
                                      "customized"]  # fmt: skip
    # a new row is a new method, ordered where the row stands
    row = Method("distilled", Kind.DIRECT, "evaluate", "x")
    rows = list(methods_mod.METHODS)
    monkeypatch.setattr(methods_mod, "METHODS", (*rows[:3], row, *rows[3:]))
    assert method_of("distilled") is row
    assert ordered_methods(["full", "distilled", "mcts"]) == ["mcts", "distilled", "full"]


def test_the_stage_table_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        STAGES[0].name = "other"  # type: ignore[misc]


def test_an_adapter_folder_of_any_name_is_planned_for_evaluation(tmp_path):
    """A user's own adapter under experts/ (a name no METHODS row has) is evaluated like the
    experts; a name that is neither a method nor a folder fails naming what exists."""
    from bdc_ray.pipeline.evaluate import _plan, adapter_dirs, default_trained
    from bdc_ray.pipeline.stages import StageInputError

    for name in ("mine", "full"):
        (tmp_path / "experts" / name).mkdir(parents=True)
        (tmp_path / "experts" / name / "adapter_config.json").write_text("{}")
    run = RunDir(tmp_path)
    adapters = adapter_dirs(run)
    assert list(adapters) == ["full", "mine"] and default_trained(run) == ["full", "mine"]
    cfg = Config()
    fp, fn = _plan(cfg, run, "mine", cfg.models[cfg.base_model], adapters)
    assert fn.args[3].adapter == str(adapters["mine"].resolve()) and fp
    with pytest.raises(StageInputError, match="adapters in .*: full, mine"):
        _plan(cfg, run, "cluster_7", cfg.models[cfg.base_model], adapters)


def test_stage_fingerprints_hash_only_what_changes_each_stages_results():
    from bdc_ray.config import load_config
    from bdc_ray.pipeline import stage
    from tests.helpers.pipeline import LOCAL

    base = load_config(LOCAL)

    def fp(name, *sets):
        return stage(name).fingerprint(load_config(LOCAL, list(sets)))

    def same(name, *sets):
        return stage(name).fingerprint(base) == fp(name, *sets)

    # how a run is carried out, how much of the split is used, how methods are evaluated
    operational = ["models.smollm2.replicas=3", "models.smollm2.num_cpus=0.25",
                   "models.smollm2.max_batch_size=4", "search.concurrent_trees=1",
                   "eval.workers=1", "models.unused.path=tiny-random-llama"]  # fmt: skip
    for name in ("explore", "experts"):
        for change in [*operational, "eval.max_tokens=7", "eval.thought_tokens=9"]:
            assert same(name, change), (name, change)
    for change in ("data.max_test=2", "data.max_train=5", "search.test_limit=1"):
        assert same("explore", change), change  # each tree's trace stays valid
    for change in operational:
        assert same("zero_shot", change) and same("evaluate", change), change
    # what does change results
    for change in ("agents.0.temperature=0.3", "search.width=5", "search.gamma=0.5",
                   "eval.timeout_s=2", "models.smollm2.dtype=bfloat16", "data.split_seed=3",
                   "seed=4"):  # fmt: skip
        assert not same("explore", change), change
    for change in ("experts.r=4", "models.smollm2.path=tiny-random-llama", "seed=4"):
        assert not same("experts", change), change
    for change in ("eval.max_tokens=7", "data.max_test=2", "models.smollm2.dtype=bfloat16"):
        assert not same("evaluate", change) and not same("zero_shot", change), change
    with pytest.raises(KeyError, match="no field"):
        base.fingerprint("search-no_such_field")
