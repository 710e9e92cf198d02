"""The gated mixture's algebra on the tiny model (docs/method.md#customize-the-input-aware-hypernetwork)."""

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from bdc_ray.customize.hypernet import HyperNetwork
from bdc_ray.customize.mixture import AdapterMismatch, inject_mixture

from .conftest import make_expert


def ids(batch=3, length=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 5000, (batch, length), generator=g)


def close(a, b):
    """Logits agree to float32 rounding (the tiny model's logits are large)."""
    return float((a - b).abs().max()) <= 1e-5 * float(b.abs().max())


@pytest.fixture()
def mix(tiny_model_path, experts):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path).eval()
    return inject_mixture(model, experts)


def peft_model(tiny_model_path, experts, names):
    base = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    m = PeftModel.from_pretrained(base, str(experts[names[0]]), adapter_name=names[0])
    for n in names[1:]:
        m.load_adapter(str(experts[n]), adapter_name=n)
    return m.eval()


@torch.no_grad()
def test_uniform_gates_equal_the_experts_mean_delta_built_by_peft_cat(
    mix, tiny_model_path, experts
):
    names = list(experts)
    ref = peft_model(tiny_model_path, experts, names)
    ref.add_weighted_adapter(names, [1 / 3] * 3, "mean", combination_type="cat")
    ref.set_adapter("mean")
    x = ids()
    with mix.gated(mix.uniform_gates(3)) as m:
        ours = m(input_ids=x).logits
    assert close(ours, ref(input_ids=x).logits)
    # and not peft's `linear` (mean of A's times mean of B's): a different adapter
    ref.add_weighted_adapter(names, [1 / 9] * 3, "lin", combination_type="linear")
    ref.set_adapter("lin")
    assert not close(ours, ref(input_ids=x).logits)


@pytest.mark.parametrize("k", [0, 1, 2])
@torch.no_grad()
def test_one_hot_gates_equal_that_expert_alone(mix, tiny_model_path, experts, k):
    name = list(experts)[k]
    ref = peft_model(tiny_model_path, experts, [name])
    x = ids(seed=k)
    with mix.gated(mix.expert_gates(3, k)) as m:
        assert close(m(input_ids=x).logits, ref(input_ids=x).logits)


@torch.no_grad()
def test_a_mixed_batch_equals_each_row_alone(mix):
    x = ids(batch=4, length=10, seed=7)
    g = torch.rand((4, len(mix.modules), mix.width), generator=torch.Generator().manual_seed(1))
    with mix.gated(g) as m:
        together = m(input_ids=x).logits
    for i in range(4):
        with mix.gated(g[i : i + 1]) as m:
            alone = m(input_ids=x[i : i + 1]).logits
        assert close(together[i : i + 1], alone), i
    # different gates do change the output (the test above is not vacuous)
    with mix.gated(mix.uniform_gates(4)) as m:
        assert not close(m(input_ids=x).logits, together)


def test_mismatched_experts_are_refused_naming_the_difference(tiny_model_path, experts, tmp_path):
    base = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    other_r = make_expert(tiny_model_path, tmp_path / "r8", seed=5, r=8)
    with pytest.raises(AdapterMismatch, match=r"'odd' differs from 'cluster_0' in r: 8 vs 4"):
        inject_mixture(base, {"cluster_0": experts["cluster_0"], "odd": other_r})
    other_t = make_expert(tiny_model_path, tmp_path / "k", seed=5, targets=("k_proj", "v_proj"))
    with pytest.raises(AdapterMismatch, match="in target_modules"):
        inject_mixture(base, {"cluster_0": experts["cluster_0"], "odd": other_t})
    with pytest.raises(AdapterMismatch, match="trained on base model"):
        inject_mixture(base, dict(experts), base_model="/models/another-model")
    with pytest.raises(ValueError, match=r"expected \(batch, 4, 12\)"):
        mix = inject_mixture(AutoModelForCausalLM.from_pretrained(tiny_model_path), experts)
        with mix.gated(torch.ones(2, 3, 12)):
            pass


def test_hypernetwork_starts_at_the_mean_and_gates_sum_to_r(mix):
    hyper = HyperNetwork(in_dim=10, active=[0, 2], n_modules=4, k=3, r=4, hidden=8, tau=0.7)
    g = hyper(torch.randn(5, 10))
    assert g.shape == (5, 4, 12)
    assert torch.allclose(g, torch.full_like(g, 1 / 3))  # zero-initialised last layer
    with torch.no_grad():
        hyper.w2.normal_()
    g = hyper(torch.randn(5, 10))
    assert torch.allclose(g[:, [0, 2]].sum(-1), torch.full((5, 2), 4.0))  # r * softmax
    assert torch.allclose(g[:, [1, 3]], torch.full((5, 2, 12), 1 / 3))  # not adapted: the mean
    assert not torch.allclose(g[0, 0], g[1, 0])  # input-aware
