import pytest

from tests.helpers.runs import make_solver_run


@pytest.fixture(scope="session")
def solver_run(tiny_model_path, reference_rows, tmp_path_factory):
    return make_solver_run(tmp_path_factory.mktemp("solver_run"), tiny_model_path, reference_rows)


@pytest.fixture(scope="session")
def solver(solver_run):
    from bdc_ray.customize.solver import CustomizedSolver

    return CustomizedSolver(solver_run, max_batch_size=16)
