"""The customised solver as a Ray task: loads base model, experts, encoder and hypernetwork from a
run directory in the worker and generates every prompt under its own gates."""

from __future__ import annotations

from typing import Any


def customized_generate(run_dir: str, prompts: list, sampling: Any, model_cfg: dict) -> list:
    """Completions in prompt order, each with `meta["gates"]` (run with `ray.remote`)."""
    from bdc_ray.customize.solver import CustomizedSolver

    solver = CustomizedSolver(
        run_dir,
        dtype=model_cfg["dtype"],
        max_batch_size=model_cfg["max_batch_size"],
        num_threads=model_cfg["num_threads"],
    )
    return solver.generate(prompts, sampling)
