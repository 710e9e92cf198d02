import pytest


@pytest.fixture(scope="session")
def reference_rows():
    """Real training examples without search: the reference solutions of 16 HumanEval problems."""
    from bdc_ray.config import DataConfig
    from bdc_ray.data import load_problems
    from bdc_ray.disentangle.examples import reference_examples

    return reference_examples(load_problems(DataConfig())[:16])
