"""Ray Tune search of the hypernetwork on the tiny model, and the customised solver reloaded
from the run directory."""

import csv
import json

import numpy as np
import pytest

from bdc_ray.config import Config
from bdc_ray.llm.base import Sampling
from bdc_ray.pipeline.hypernet import tune_hypernet
from bdc_ray.rundir import RunDir, write_jsonl

from .conftest import make_expert


@pytest.fixture(scope="module")
def tuned_run(ray_session, tiny_model_path, reference_rows, tmp_path_factory):
    from bdc_ray.disentangle.embed import embed_texts, load_encoder
    from bdc_ray.disentangle.examples import example_text

    root = tmp_path_factory.mktemp("run")
    rows = reference_rows[:12]
    write_jsonl(root / "clusters" / "examples.jsonl", rows)
    emb = embed_texts(load_encoder("all-minilm-l6-v2"), [example_text(r) for r in rows])
    np.save(root / "clusters" / "centroids.npy", emb[[0, 6]])  # two "centroids"
    for k in range(2):
        make_expert(tiny_model_path, root / "experts" / f"cluster_{k}", seed=10 + k)
    cfg = Config.model_validate(
        {
            "models": {"tiny": {"path": "tiny-random-llama"}},
            "base_model": "tiny",
            "agents": [{"name": "a", "model": "tiny"}],
            "hypernet": {
                "epochs": 2,
                "max_seq_len": 384,
                "val_fraction": 0.25,
                "tune": {
                    "num_samples": 3,
                    "max_concurrent": 2,
                    "lr": [0.01, 0.05],
                    "hidden": [8, 16],
                },
            },
        }
    )
    summary = tune_hypernet(cfg, RunDir(root))
    return root, cfg, summary


def test_tune_picks_the_trial_with_the_lowest_validation_loss(tuned_run):
    root, _, summary = tuned_run
    with open(root / "hypernet" / "tune_results.csv") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == summary["trials"] == 3 and summary["failed_trials"] == 0
    best = min(float(r["val_loss"]) for r in table)
    assert summary["best_val_loss"] == pytest.approx(best)
    meta = json.loads((root / "hypernet" / "hypernet.json").read_text())
    assert (
        meta["experts"] == ["cluster_0", "cluster_1"]
        and meta["tune_config"] == summary["best_config"]
    )
    # the gates learned something: the best trial's validation loss is below that of the
    # zero-initialised start (the experts' mean), which every trial starts from
    assert summary["best_val_loss"] < summary["mean_experts_val_loss"] - 0.01
    assert (root / "plots" / "tune.png").stat().st_size > 5000


def test_rerun_skips_tuning(tuned_run):
    root, cfg, summary = tuned_run
    stamp = (root / "hypernet" / "hypernet.pt").stat().st_mtime_ns
    assert tune_hypernet(cfg, RunDir(root)) == summary
    assert (root / "hypernet" / "hypernet.pt").stat().st_mtime_ns == stamp


def test_solver_reloads_from_disk_with_identical_outputs_and_returns_gates(
    tuned_run, reference_rows
):
    from bdc_ray.customize.solver import CustomizedSolver

    root, _, _ = tuned_run
    prompts = [r["messages"] for r in reference_rows[:5]]
    sampling = Sampling(max_tokens=6, temperature=0.0)
    first = CustomizedSolver(root, max_batch_size=2)
    a = first.generate(prompts, sampling)
    b = CustomizedSolver(root, max_batch_size=4).generate(prompts, sampling)
    assert [c.text for c in a] == [c.text for c in b]
    for c in a:
        w = c.meta["gates"]
        assert set(w) == {"cluster_0", "cluster_1"} and sum(w.values()) == pytest.approx(
            1, abs=1e-3
        )
    # each row was generated under its own gates: alone it gives the same text
    for i, p in enumerate(prompts):
        assert first.generate([p], sampling)[0].text == a[i].text
    g = first.gates(prompts)
    assert g.shape == (5, len(first.mix.modules), first.mix.width)


def test_solver_chunked_prefill_keeps_each_rows_gates(tuned_run, reference_rows, monkeypatch):
    """Prompts of different lengths prefilled in groups, each group under its own rows' gates:
    the same texts as a whole-batch prefill and as each prompt alone."""
    from bdc_ray.customize.solver import CustomizedSolver
    from bdc_ray.llm import transformers_backend as tb

    root, _, _ = tuned_run
    short = [[{"role": "user", "content": q}] for q in ("Hi.", "Sort a list.", "Add two ints.")]
    prompts = [r["messages"] for r in reference_rows[:3]] + short
    sampling = Sampling(max_tokens=6, temperature=0.0)
    solver = CustomizedSolver(root, max_batch_size=6)
    used, real = [], tb.chunked_prefill
    monkeypatch.setattr(
        tb, "chunked_prefill", lambda *a, **k: used.append(real(*a, **k)) or used[-1]
    )
    solver.backend.prefill_overhead = 0
    grouped = solver.generate(prompts, sampling)
    assert used and used[-1] is not None  # prefilled in groups
    solver.backend.prefill_overhead = None
    whole = solver.generate(prompts, sampling)
    alone = [solver.generate([p], sampling)[0] for p in prompts]
    assert [c.text for c in grouped] == [c.text for c in whole] == [c.text for c in alone]
