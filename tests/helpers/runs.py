"""A run directory holding what the customised solver needs, built on the tiny model in
seconds (no training)."""

from __future__ import annotations

from pathlib import Path

from bdc_ray.customize.synthetic import random_solver_run


def make_solver_run(root: Path, base_path: Path, rows: list[dict]) -> Path:
    from bdc_ray.disentangle.examples import example_text

    return random_solver_run(root, base_path, [example_text(r) for r in rows[:8]], k=2, r=4,
                             b_scale=3.0)  # fmt: skip
