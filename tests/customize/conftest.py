import pytest


def make_expert(base_path, out, seed, r=4, targets=("q_proj", "v_proj"), alpha=8):
    """A LoRA adapter with random A and B (as if trained), saved in peft format."""
    from bdc_ray.customize.synthetic import random_expert

    return random_expert(
        base_path, out, seed, r=r, alpha=alpha, targets=tuple(targets), b_scale=3.0
    )


@pytest.fixture(scope="session")
def experts(tiny_model_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("experts")
    return {
        f"cluster_{k}": make_expert(tiny_model_path, root / f"cluster_{k}", seed=k)
        for k in range(3)
    }
