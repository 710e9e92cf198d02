"""Random experts and a random customised-solver run directory, for benchmarks and tests whose
subject is speed or mechanics, not what training learned (generation cost does not depend on
the weights' values). Real runs come from jobs/full.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def random_expert(
    base_path: str | Path,
    out: str | Path,
    seed: int,
    r: int = 8,
    alpha: float = 16,
    targets: tuple[str, ...] = ("q_proj", "v_proj"),
    b_scale: float = 1.0,
) -> Path:
    """A LoRA adapter in peft format with random A and B (B scaled by `b_scale`: peft's
    random init is small; a trained expert's delta is visible)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base_path))
    cfg = LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), init_lora_weights=False)
    model = get_peft_model(model, cfg)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.mul_(b_scale)
    model.save_pretrained(str(out))
    return Path(out)


def random_solver_run(
    root: str | Path,
    base_path: str | Path,
    texts: list[str],
    k: int = 2,
    r: int = 8,
    b_scale: float = 1.0,
    gate_spread: float = 2.0,
    encoder: str = "all-minilm-l6-v2",
    seed: int = 0,
) -> Path:
    """A run directory CustomizedSolver loads: K random experts, centroids = embeddings of K
    of `texts`, and a hypernetwork whose last layer is random (std `gate_spread`), so prompts
    get different gates."""
    from transformers import AutoModelForCausalLM

    from ..disentangle.embed import embed_texts, load_encoder
    from .hypernet import HyperNetwork
    from .mixture import inject_mixture

    root = Path(root)
    if len(texts) < k:
        raise ValueError(f"need at least k={k} texts for the centroids, got {len(texts)}")
    experts = {
        f"cluster_{i}": random_expert(
            base_path,
            root / "experts" / f"cluster_{i}",
            seed + 20 + i,
            r=r,
            alpha=2 * r,
            b_scale=b_scale,
        )  # fmt: skip
        for i in range(k)
    }
    emb = embed_texts(load_encoder(encoder), texts)
    (root / "clusters").mkdir(parents=True, exist_ok=True)
    picks = np.linspace(0, len(texts) - 1, k).astype(int)
    np.save(root / "clusters" / "centroids.npy", emb[picks])
    mix = inject_mixture(
        AutoModelForCausalLM.from_pretrained(str(base_path)), experts, str(base_path)
    )
    torch.manual_seed(seed)
    n = len(mix.modules)
    net = HyperNetwork(emb.shape[1] + k, list(range(n)), n, mix.k, mix.r, hidden=8, tau=0.5)
    with torch.no_grad():
        net.w2.normal_(0, gate_spread)
    meta = {
        "base_model": str(base_path),
        "base_model_spec": None,
        "experts": mix.experts,
        "modules": mix.modules,
        "encoder": encoder,
        "layers": "all",
    }
    net.save(root / "hypernet", meta)
    return root
