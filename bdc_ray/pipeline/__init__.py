"""The BDC pipeline as library code: one module per stage, one table of stages
(:mod:`bdc_ray.pipeline.stages`) and one of methods (:mod:`bdc_ray.pipeline.methods`).

    import ray
    from bdc_ray.config import load_config
    from bdc_ray.pipeline import run_pipeline, run_stage
    from bdc_ray.rundir import RunDir

    ray.init()
    cfg = load_config("configs/local.yaml", ["data.max_test=4"])
    run_stage("zero_shot", cfg, RunDir("runs/notebook"))

Every stage function takes the typed config and the run directory and expects a running Ray;
nothing here starts one (the jobs in `jobs/` do).
"""

import importlib
from typing import Any

# names -> submodule; imported on first use, so `bdc_ray.eval` can read the method table
# without loading the stages (which import `bdc_ray.eval` themselves)
_EXPORTS = {
    "METHODS": "methods",
    "Kind": "methods",
    "Method": "methods",
    "method_of": "methods",
    "ordered_methods": "methods",
    "run_pipeline": "runner",
    "run_stage": "runner",
    "summary_text": "runner",
    "STAGES": "stages",
    "STAGE_NAMES": "stages",
    "Stage": "stages",
    "stage": "stages",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
