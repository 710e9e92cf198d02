"""The BDC pipeline as library code: one module per stage, one table of stages
(:mod:`bdc_ray.pipeline.stages`) and one of methods (:mod:`bdc_ray.methods`).

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

from ..methods import METHODS, Kind, Method, method_of, ordered_methods
from .runner import run_pipeline, run_stage, summary_text
from .stages import STAGE_NAMES, STAGES, Stage, stage

__all__ = [
    "METHODS",
    "STAGES",
    "STAGE_NAMES",
    "Kind",
    "Method",
    "Stage",
    "method_of",
    "ordered_methods",
    "run_pipeline",
    "run_stage",
    "stage",
    "summary_text",
]
