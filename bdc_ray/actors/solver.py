"""The customised solver as a Ray task: loads base model, experts, encoder and hypernetwork from a
run directory in the worker and generates every prompt under its own gates."""

from __future__ import annotations

from typing import Any

from ..config import ModelConfig


def customized_generate(run_dir: str, prompts: list, sampling: Any, model_cfg: ModelConfig) -> list:
    """Completions in prompt order, each with `meta["gates"]` (run with `ray.remote`).
    `run_dir`: the run's folder or its run-storage URI (fetched on the task's node)."""
    from ..customize.solver import CustomizedSolver, solver_folder

    cfg = ModelConfig.model_validate(model_cfg)  # checked again on arrival
    solver = CustomizedSolver(
        solver_folder(run_dir),
        dtype=cfg.dtype,
        max_batch_size=cfg.max_batch_size,
        num_threads=cfg.num_threads,
    )
    return solver.generate(prompts, sampling)
