"""The pipeline's stages in one table: `jobs/full.py` runs them in this order.

Each row names the stage, the function that runs it (``module:function``, imported when the
stage runs, so reading the table loads nothing heavy), the run-directory files it writes (a
stage whose outputs did not change was up to date and skipped), the config sections its
fingerprint hashes (outputs made under another config are redone) and its command-line driver.
Adding a stage is one row here and a module with its entry function.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..config import Config
from ..rundir import RunDir


class StageInputError(ValueError):
    """A stage's inputs are missing or do not fit (run an earlier stage, or fix the input)."""


# decoding and scoring of evaluated methods (the base model, with or without an adapter)
EVAL_SECTIONS = ("data", "models@base", "eval", "seed")

# what one tree's result depends on: the problem (the split, not how many of it are used), the
# agents and their models, the search (not how many problems it takes), the sandbox's limits.
# Not evaluation settings or replica counts; each tree's trace carries this fingerprint
EXPLORE_SECTIONS = (
    "data-max_train-max_test",
    "models@agents",
    "agents",
    "search-train_limit-test_limit",
    "eval.timeout_s",
    "eval.sandbox_allow_missing",
    "eval.sandbox_packages",
    "seed",
)


@dataclass(frozen=True)
class Stage:
    name: str
    entry: str  # "module:function", called as function(cfg, run)
    outputs: tuple[str, ...]  # globs under the run directory
    fingerprint_sections: tuple[str, ...]
    job: str  # the command-line driver of this stage alone
    summary: str

    def function(self) -> Callable[[Config, RunDir], Any]:
        module, _, name = self.entry.partition(":")
        return getattr(importlib.import_module(module), name)

    def run(self, cfg: Config, run: RunDir) -> Any:
        return self.function()(cfg, run)

    def fingerprint(self, cfg: Config) -> str:
        return cfg.fingerprint(*self.fingerprint_sections)

    def stamp(self, run: RunDir) -> dict[str, int]:
        """Modification times of the stage's outputs: unchanged after a run means skipped."""
        return {
            str(p): p.stat().st_mtime_ns for pattern in self.outputs for p in run.root.glob(pattern)
        }


STAGES: tuple[Stage, ...] = (
    Stage(
        "zero_shot",
        "bdc_ray.pipeline.evaluate:evaluate_zero_shot",
        ("eval/samples/base_zero_shot.jsonl", "eval/samples/base_two_stage.jsonl"),
        EVAL_SECTIONS,
        "jobs/evaluate.py --methods base_zero_shot base_two_stage",
        "the base model on the test split, direct and two-stage (thoughts, then code)",
    ),
    Stage(
        "explore",
        "bdc_ray.pipeline.explore:explore",
        ("traces/*.parquet", "sft/*.jsonl"),
        EXPLORE_SECTIONS,
        "jobs/explore.py",
        "Boost: MC-Tree-Of-Agents on train and test problems (traces, SFT data, method mcts)",
    ),
    Stage(
        "disentangle",
        "bdc_ray.pipeline.disentangle:disentangle",
        ("clusters/*",),
        ("cluster", "seed"),
        "jobs/disentangle.py",
        "Ray Data embedding and faiss clustering of the SFT examples",
    ),
    Stage(
        "experts",
        "bdc_ray.pipeline.experts:train_experts",
        ("experts/*/adapter_model.safetensors",),
        ("experts", "models@base", "seed"),
        "jobs/train_experts.py",
        "Ray Train + DeepSpeed LoRA experts (full and one per cluster), then the merges",
    ),
    Stage(
        "hypernet",
        "bdc_ray.pipeline.hypernet:tune_hypernet",
        ("hypernet/hypernet.json",),
        ("hypernet", "cluster", "seed"),
        "jobs/tune_hypernet.py",
        "Ray Tune search of the gating hypernetwork over the cluster experts",
    ),
    Stage(
        "evaluate",
        "bdc_ray.pipeline.evaluate:evaluate_trained",
        ("eval/samples/*.jsonl",),
        EVAL_SECTIONS,
        "jobs/evaluate.py",
        "every adapter (full, experts, merges) and the customised solver on the test split",
    ),
)

STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)


def stage(name: str) -> Stage:
    for s in STAGES:
        if s.name == name:
            return s
    raise KeyError(f"unknown stage {name!r}; stages: {', '.join(s.name for s in STAGES)}")
