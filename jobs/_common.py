"""What every job shares: argument parsing, config loading, starting or joining Ray, and turning
a user's mistake into one line and exit code 2. The stages themselves are bdc_ray.pipeline."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

# `python jobs/x.py` and `ray job submit --working-dir .` both run this file as a script:
# put the project root first on the path so the code next to it is the code that runs.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bdc_ray.config import Config, ConfigError, load_config, save_config  # noqa: E402

log = logging.getLogger("bdc_ray.jobs")


def parser(description: str, epilog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=description,
        epilog=(epilog + "\n\n" if epilog else "")
        + "every config key, its default and meaning: configs/README.md",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", default=str(ROOT / "configs" / "local.yaml"), help="YAML config")
    p.add_argument(
        "--run-dir", default=os.environ.get("RUN_DIR", "runs/demo"), help="run directory"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="dotted override, e.g. --set search.rollouts=8 (repeatable)",
    )
    return p


def load(args: argparse.Namespace, models: bool = True, data: bool = True) -> Config:
    """The config, checked with what it names, before Ray starts or any stage runs: the run
    dir (writable), the models (`models`: each resolves on this machine) and the problems
    (`data`: the file loads with at least one usable row). A mistake ends the job here with
    one line and exit code 2; the resolved config is saved as RUN_DIR/config.yaml."""
    logging.basicConfig(
        level=os.environ.get("BDC_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from bdc_ray.data import ProblemLoadError
    from bdc_ray.llm.models import ModelNotFoundError
    from bdc_ray.rundir import RunDirError, check_run_dir

    try:
        cfg = load_config(args.config, args.overrides)
        if models:
            check_models(cfg)
        if data:
            from bdc_ray.data import load_problems

            load_problems(cfg.data)
        check_run_dir(args.run_dir)  # last: nothing is created for input that fails
    except (ConfigError, ModelNotFoundError, RunDirError, ProblemLoadError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    from bdc_ray.rundir import RunDir

    run = RunDir(args.run_dir)
    save_config(cfg, run.config)
    run.storage.push()  # the run's config is in run storage before any stage runs
    return cfg


def check_models(cfg: Config) -> None:
    """Every model the config defines resolves here (an openai one is remote: not checked)."""
    from bdc_ray.llm.models import ModelNotFoundError, check_model

    for name, m in cfg.models.items():
        if m.backend == "openai":
            continue
        try:
            check_model(m.path)
        except ModelNotFoundError as e:
            raise ModelNotFoundError(f"models.{name}.path: {e}") from None


def init_ray(cfg: Config) -> None:
    """Join the cluster the job was submitted to (RAY_ADDRESS) or a configured address;
    otherwise start a local Ray sized by `resources`. Reuses an initialised Ray (tests)."""
    import ray

    if ray.is_initialized():
        return
    # workers import the project from the same root as the driver
    runtime_env = {
        "env_vars": {"PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    }
    address = cfg.resources.address or os.environ.get("RAY_ADDRESS")
    if address:
        # a submitted job already carries its runtime env (working_dir); keep it
        ray.init(address=address)
    else:
        ctx = ray.init(
            address="local",  # a new local Ray, even if a stale cluster file says otherwise
            num_cpus=cfg.resources.num_cpus,
            num_gpus=cfg.resources.num_gpus,
            include_dashboard=cfg.resources.include_dashboard,
            runtime_env=runtime_env,
        )
        advertise_local_cluster(ctx)


def advertise_local_cluster(ctx) -> None:
    """Point Ray's "current cluster" file at the Ray this process started.

    `ray.init(address="local")` leaves that file as an earlier `ray start` wrote it, and Ray's own
    helpers that look the cluster up from a worker (Ray Train V2's placement-group cleaner, the
    state API) then wait on a dead address: seconds per trainer plus a traceback in the logs.
    `ray start` writes the same file the same way."""
    from ray._private.utils import write_ray_address

    try:
        write_ray_address(ctx.address_info["gcs_address"])
    except (OSError, KeyError) as e:  # read-only temp dir: only slower shutdowns
        log.warning("could not record the local Ray address: %s", e)


def wait_forever() -> None:
    """Keep a serving job alive until interrupted, then shut Serve down."""
    import time

    from ray import serve

    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()


def run_main(main, argv: list[str] | None = None):
    """Run a job's main; a mistake in the user's input (data file, examples, experts, model)
    ends the job with one line naming it and exit code 2, not a traceback. Outputs already
    written stay: every stage writes atomically and is skipped when done."""
    from bdc_ray.customize.mixture import AdapterMismatch
    from bdc_ray.data import ProblemLoadError
    from bdc_ray.disentangle.cluster import ClusterError
    from bdc_ray.disentangle.examples import ExampleError
    from bdc_ray.llm.models import ModelNotFoundError
    from bdc_ray.methods import UnknownMethod
    from bdc_ray.pipeline.stages import StageInputError
    from bdc_ray.rundir import RunDirError

    user_errors = (ExampleError, ClusterError, AdapterMismatch, ProblemLoadError,
                   ModelNotFoundError, StageInputError, UnknownMethod, RunDirError)  # fmt: skip
    try:
        return main(argv)
    except user_errors as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
