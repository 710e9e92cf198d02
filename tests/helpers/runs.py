"""A run directory holding what the customised solver needs, built on the tiny model in
seconds (no training): two random LoRA experts, centroids from real embeddings, and a
hypernetwork whose last layer is random, so different prompts get different gates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tests.customize.conftest import make_expert


def make_solver_run(root: Path, base_path: Path, rows: list[dict]) -> Path:
    from transformers import AutoModelForCausalLM

    from bdc_ray.customize.hypernet import HyperNetwork
    from bdc_ray.customize.mixture import inject_mixture
    from bdc_ray.disentangle.embed import embed_texts, load_encoder
    from bdc_ray.disentangle.examples import example_text

    root.mkdir(parents=True, exist_ok=True)
    experts = {
        f"cluster_{k}": make_expert(base_path, root / "experts" / f"cluster_{k}", seed=20 + k)
        for k in range(2)
    }
    emb = embed_texts(load_encoder("all-minilm-l6-v2"), [example_text(r) for r in rows[:8]])
    (root / "clusters").mkdir(exist_ok=True)
    np.save(root / "clusters" / "centroids.npy", emb[[0, 4]])
    mix = inject_mixture(AutoModelForCausalLM.from_pretrained(base_path), experts, str(base_path))
    torch.manual_seed(0)
    net = HyperNetwork(emb.shape[1] + 2, list(range(len(mix.modules))), len(mix.modules), mix.k,
                       mix.r, hidden=8, tau=0.5)  # fmt: skip
    with torch.no_grad():
        net.w2.normal_(0, 2.0)
    net.save(
        root / "hypernet",
        {
            "base_model": str(base_path),
            "base_model_spec": None,
            "experts": mix.experts,
            "modules": mix.modules,
            "encoder": "all-minilm-l6-v2",
            "layers": "all",
        },
    )
    return root
