"""TIES and DARE merges act on the experts' weight deltas (task vectors), checked against a
direct computation on the dense deltas; the linear merge averages the factors."""

import json

import pytest
import torch
from safetensors.torch import load_file

from bdc_ray.customize.synthetic import random_expert
from bdc_ray.disentangle.merge import merge_experts

R, ALPHA, DENSITY = 4, 8.0, 0.5
HIDDEN = 64  # the tiny model's q_proj is 64 x 64: rank 64 keeps a merged delta exactly


@pytest.fixture(scope="module")
def experts(tiny_model_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("merge")
    return root, {
        f"cluster_{k}": random_expert(tiny_model_path, root / f"cluster_{k}", seed=20 + k, r=R,
                                      alpha=ALPHA, targets=("q_proj",), b_scale=3.0)
        for k in range(2)
    }  # fmt: skip


def deltas(folder, scale):
    """{module: B @ A * scale} of one saved adapter."""
    w = load_file(folder / "adapter_model.safetensors")
    return {
        k.replace(".lora_A.weight", ""): scale * w[k.replace("lora_A", "lora_B")] @ w[k]
        for k in w
        if "lora_A" in k
    }


def merged_deltas(folder):
    cfg = json.loads((folder / "adapter_config.json").read_text())
    return deltas(folder, cfg["lora_alpha"] / cfg["r"]), cfg["r"]


def dense_ties(ds, density):
    """TIES (Yadav et al. 2023) written out: keep each task vector's top-`density` entries by
    magnitude, elect each entry's sign by the summed mass, average the entries that agree."""
    trimmed = []
    for d in ds:
        k = int(density * d.numel())
        threshold = d.abs().flatten().topk(k).values[-1]
        trimmed.append(torch.where(d.abs() >= threshold, d, torch.zeros_like(d)))
    t = torch.stack(trimmed)
    sign = torch.sign(t.sum(0))
    agree = (torch.sign(t) == sign) & (t != 0)
    return (t * agree).sum(0) / agree.sum(0).clamp(min=1)


def rank_r(d, r):
    u, s, vh = torch.linalg.svd(d)
    return u[:, :r] @ torch.diag(s[:r]) @ vh[:r]


def test_ties_is_ties_on_the_deltas_at_full_rank_and_its_svd_truncation_at_rank_r(
    tiny_model_path, experts, tmp_path
):
    root, paths = experts
    ds = [deltas(p, ALPHA / R) for p in paths.values()]
    full = merge_experts(tiny_model_path, paths, tmp_path / "full", ["ties_svd"], DENSITY,
                         svd_rank=HIDDEN)  # fmt: skip
    low = merge_experts(tiny_model_path, paths, tmp_path / "low", ["ties_svd"], DENSITY)
    got_full, r_full = merged_deltas(full["ties_svd"])
    got_low, r_low = merged_deltas(low["ties_svd"])
    assert (r_full, r_low) == (HIDDEN, R) and len(got_full) == 2  # q_proj of both layers
    for module, merged in got_full.items():
        want = dense_ties([d[module] for d in ds], DENSITY)
        assert torch.allclose(merged, want, atol=1e-5), module
        assert torch.allclose(got_low[module], rank_r(want, R), atol=1e-5), module
        # not the factor-wise merge it replaced: the mean of the deltas differs from TIES
        assert not torch.allclose(want, sum(d[module] for d in ds) / 2, atol=1e-3)
    rec = json.loads((low["ties_svd"] / "merge.json").read_text())
    assert rec["combination_type"] == "ties_svd" and rec["acts_on"] == "weight deltas"


def test_dare_drops_and_rescales_each_delta_then_averages(tiny_model_path, experts, tmp_path):
    root, paths = experts
    ds = [deltas(p, ALPHA / R) for p in paths.values()]
    # density 1 drops nothing: DARE is the deltas' mean
    (whole,) = merge_experts(tiny_model_path, paths, tmp_path / "d1", ["dare_svd"], 1.0,
                             svd_rank=HIDDEN).values()  # fmt: skip
    for module, merged in merged_deltas(whole)[0].items():
        assert torch.allclose(merged, (ds[0][module] + ds[1][module]) / 2, atol=1e-5)
    # density 0.5: every entry is a subset sum of the rescaled deltas, mean(m_i * d_i / 0.5)
    (half,) = merge_experts(tiny_model_path, paths, tmp_path / "d5", ["dare_svd"], DENSITY,
                            svd_rank=HIDDEN).values()  # fmt: skip
    for module, merged in merged_deltas(half)[0].items():
        a, b = (d[module] / DENSITY / 2 for d in ds)
        options = torch.stack([torch.zeros_like(a), a, b, a + b])  # dropped, kept by one, both
        err = (options - merged).abs().min(0).values
        assert err.max() < 1e-4, module
        kept_a = ((options[1] - merged).abs() < 1e-4) | ((options[3] - merged).abs() < 1e-4)
        assert 0.4 < kept_a.float().mean() < 0.6  # about `density` of each delta survives
