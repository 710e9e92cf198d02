import pytest

from bdc_ray.sandbox import Limits, Sandbox


@pytest.fixture(scope="session")
def sandbox():
    sb = Sandbox(
        concurrency=2, limits=Limits(test_timeout_s=0.5, total_timeout_s=2.0, memory_mb=512)
    )
    yield sb
    sb.close()
