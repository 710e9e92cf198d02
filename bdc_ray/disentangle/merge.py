"""Merging baselines (docs/method.md#disentangle-disenlora): linear, TIES and DARE merges of
the cluster experts with peft's `add_weighted_adapter`, each saved as an ordinary peft adapter.

TIES and DARE are defined on task vectors, the experts' weight deltas B @ A * alpha / r, not on
the LoRA factors: trimming or dropping entries of A and B separately, or electing signs on them,
is something else. So they run as peft's `ties_svd` / `dare_linear_svd`, which combine the dense
deltas and reduce the result back to a rank-`svd_rank` adapter by SVD (`merged_ties_svd`,
`merged_dare_svd`)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# our merge name -> peft combination_type, and the per-expert weight given K experts.
# linear: peft multiplies each expert's A and B by sqrt(weight * alpha / r) and gives the merged
# adapter scaling 1, so weight 1/K^2 makes the merged A and B the experts' means (times
# sqrt(alpha / r)): delta = (alpha / r) * mean(B) @ mean(A), a merge of the factors.
# The *_svd ones weight the dense deltas directly: TIES's disjoint mean already averages (1.0);
# DARE sums the weighted, rescaled deltas, so 1/K makes it their mean.
COMBINATIONS = {
    "linear": ("linear", lambda k: 1.0 / k**2),  # mean of A's, mean of B's
    "ties_svd": (
        "ties_svd",
        lambda k: 1.0,
    ),  # deltas: trim to `density`, elect signs, disjoint mean
    "dare_svd": ("dare_linear_svd", lambda k: 1.0 / k),  # deltas: drop to `density`, rescale, mean
}


class AdapterMismatch(ValueError):
    """Adapters that cannot be combined; the message names what differs."""


def read_adapter_config(path: str | Path) -> dict[str, Any]:
    cfg_path = Path(path) / "adapter_config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{path}: not a peft adapter (no adapter_config.json)")
    return json.loads(cfg_path.read_text())


def check_compatible(adapters: dict[str, str | Path], base_model: str | None = None) -> dict:
    """All adapters must share base model, rank, alpha and target modules; returns the shared
    config. `base_model` (a path) is compared by folder name when given."""
    cfgs = {name: read_adapter_config(p) for name, p in adapters.items()}
    first_name, first = next(iter(cfgs.items()))
    for name, c in cfgs.items():
        for key in ("base_model_name_or_path", "r", "lora_alpha", "target_modules", "peft_type"):
            a, b = first.get(key), c.get(key)
            if key == "target_modules":
                a, b = sorted(a or []), sorted(b or [])
            if key == "base_model_name_or_path":
                a, b = Path(str(a)).name, Path(str(b)).name
            if a != b:
                raise AdapterMismatch(
                    f"adapter {name!r} differs from {first_name!r} in {key}: {b!r} vs {a!r}"
                )
    if base_model is not None:
        want = Path(str(base_model)).name
        got = Path(str(first.get("base_model_name_or_path"))).name
        if got != want:
            raise AdapterMismatch(f"adapters were trained on base model {got!r}, not on {want!r}")
    return first


def merge_experts(
    base_model: str | Path,
    experts: dict[str, str | Path],
    out_root: str | Path,
    kinds: list[str],
    density: float = 0.5,
    seed: int = 0,
    svd_rank: int | None = None,
) -> dict[str, Path]:
    """Write `out_root/merged_<kind>/` for each kind; returns their paths. The *_svd merges
    are reduced to rank `svd_rank` (default: the experts' own rank)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    if len(experts) < 2:
        raise ValueError(f"merging needs at least 2 experts, got {len(experts)}")
    shared = check_compatible(experts, str(base_model))
    svd_rank = int(svd_rank or shared["r"])
    names = list(experts)
    base = AutoModelForCausalLM.from_pretrained(str(base_model), dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(experts[names[0]]), adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(str(experts[name]), adapter_name=name)
    out: dict[str, Path] = {}
    for kind in kinds:
        if kind not in COMBINATIONS:
            raise ValueError(f"unknown merge {kind!r}; choose from {sorted(COMBINATIONS)}")
        combo, weight = COMBINATIONS[kind]
        merged = f"merged_{kind}"
        torch.manual_seed(seed)  # DARE's random drop
        kwargs: dict[str, Any] = {}
        record: dict[str, Any] = {"experts": names, "combination_type": combo}
        if combo != "linear":
            kwargs.update(density=density, svd_rank=svd_rank)
            record.update(density=density, svd_rank=svd_rank, acts_on="weight deltas")
        else:
            record.update(acts_on="LoRA factors")
        weights = [weight(len(names))] * len(names)
        model.add_weighted_adapter(names, weights, merged, combination_type=combo, **kwargs)
        record["weights"] = weights
        out[kind] = _save_one(model, merged, Path(out_root) / merged, record)
        model.delete_adapter(merged)
    return out


def _save_one(model: Any, adapter: str, target: Path, record: dict[str, Any]) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    tmp.chmod(0o755)
    model.save_pretrained(tmp, selected_adapters=[adapter])
    src = tmp / adapter if (tmp / adapter).is_dir() else tmp  # peft nests non-default adapters
    (src / "merge.json").write_text(json.dumps(record, indent=1))
    if target.exists():
        shutil.rmtree(target)
    os.replace(src, target)
    shutil.rmtree(tmp, ignore_errors=True)
    return target
