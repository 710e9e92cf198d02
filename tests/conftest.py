import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `dtype: auto` means bf16 on CPUs with AMX-BF16 / AVX512-BF16: pin float32 so the suite's figures
# do not depend on CI's cores (tests/llm/test_precision.py checks the choice itself)
os.environ.setdefault("BDC_RAY_CPU_BF16", "0")


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model_path():
    from bdc_ray.llm.models import ensure_tiny

    return ensure_tiny()


@pytest.fixture(scope="session")
def embedded_model_path():
    from bdc_ray.llm.models import ensure_embedded

    return ensure_embedded()


@pytest.fixture(scope="session")
def tiny_backend(tiny_model_path):
    from bdc_ray.llm.transformers_backend import TransformersBackend

    # BDC_TEST_DTYPE lets the GPU check run the same tests in float32 and bfloat16
    return TransformersBackend(
        tiny_model_path, max_batch_size=8, dtype=os.environ.get("BDC_TEST_DTYPE", "auto")
    )


@pytest.fixture(scope="session")
def s3():
    """An S3 server on 127.0.0.1 for the session, with bucket `bdc`; its endpoint and keys are in
    the environment, as on a cluster node (started before Ray, whose workers inherit them)."""
    from tests.helpers.s3 import s3_server

    with s3_server(buckets=("bdc",)) as env:
        yield env


@pytest.fixture(scope="session")
def ray_session(s3):
    """One small local Ray for the whole test session (ray.init costs 10-20 s here)."""
    import ray

    if not ray.is_initialized():
        from ray._private.utils import write_ray_address

        ctx = ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
        # as `ray start` would: Ray's helpers that look the cluster up (Ray Train's
        # placement-group cleaner) then find this one, not a stale address
        write_ray_address(ctx.address_info["gcs_address"])
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def reference_rows():
    """Real training examples without search: the reference solutions of 16 HumanEval problems."""
    from bdc_ray.config import DataConfig
    from bdc_ray.data import load_problems
    from bdc_ray.disentangle.examples import reference_examples

    return reference_examples(load_problems(DataConfig())[:16])
