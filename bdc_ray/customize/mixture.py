"""The gated mixture-of-LoRA layer (docs/method.md#customize-the-input-aware-hypernetwork, batched inference without merging).

For K experts of rank r on one weight matrix, stack A_cat = [A_1; ...; A_K] (K*r x d_in) and
B_cat = [B_1 ... B_K] (d_out x K*r). For a batch whose rows carry different gates g (K*r each):

    h = A_cat x            one matmul for the whole batch
    h = h * g_row          broadcast over the row's tokens
    y = W x + s * B_cat h  s = alpha / r

so Delta W x = s * sum_k B_k diag(G_k) A_k x, at the cost of one rank-K*r LoRA whatever the
number of distinct mixtures in the batch. With G = r * softmax(z / tau), uniform gates (1/K
each) give the mean of the experts' deltas and a one-hot expert (1 on its r components) gives
that expert exactly.
"""

from __future__ import annotations

import json
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..disentangle.merge import AdapterMismatch, check_compatible

_KEY = re.compile(r"^(?:base_model\.model\.)?(.+)\.lora_([AB])(?:\.[^.]+)?\.weight$")
_LAYER = re.compile(r"\.layers\.(\d+)\.")


def load_expert_weights(adapter: str | Path) -> tuple[dict[str, dict[str, torch.Tensor]], float]:
    """{module path: {"A": (r, d_in), "B": (d_out, r)}} of a peft LoRA adapter, and its scale."""
    from safetensors.torch import load_file

    adapter = Path(adapter)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    if cfg.get("peft_type", "LORA") != "LORA":
        raise AdapterMismatch(f"{adapter}: not a LoRA adapter ({cfg.get('peft_type')})")
    r = cfg["r"]
    scale = cfg["lora_alpha"] / (r**0.5 if cfg.get("use_rslora") else r)
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in load_file(adapter / "adapter_model.safetensors").items():
        m = _KEY.match(key)
        if m:
            out.setdefault(m.group(1), {})[m.group(2)] = tensor.float()
    if not out:
        raise AdapterMismatch(f"{adapter}: no LoRA weights in adapter_model.safetensors")
    return out, scale


class GateState:
    """The gates of the current batch, shared by every gated layer of one model:
    a (batch, n_modules, K*r) tensor, row i for request i."""

    def __init__(self) -> None:
        self.gates: torch.Tensor | None = None


class GatedLoRALinear(nn.Module):
    """A frozen nn.Linear plus the K experts' stacked LoRA, gated per row."""

    def __init__(
        self,
        base: nn.Linear,
        a_cat: torch.Tensor,
        b_cat: torch.Tensor,
        scale: float,
        index: int,
        state: GateState,
    ) -> None:
        super().__init__()
        self.base = base
        dev, dt = base.weight.device, base.weight.dtype
        # stored transposed for x @ A^T and h @ B^T as plain matmuls; the scale alpha/r is
        # folded into B once, so a call costs two matmuls, one multiply and a fused add
        self.register_buffer("a_t", a_cat.t().contiguous().to(dev, dt), persistent=False)
        self.register_buffer("b_t", (b_cat * scale).t().contiguous().to(dev, dt), persistent=False)
        self.scale = scale
        self.index = index  # this module's column in the gate tensor
        self.state = state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gates = self.state.gates
        if gates is None:
            raise RuntimeError("gated LoRA layer called without gates: use MixtureModel.gated()")
        g = gates[:, self.index, :].to(x.dtype)  # (batch, K*r)
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        h = x2 @ self.a_t  # (batch * tokens, K*r): one matmul for every row and expert
        if x.dim() == 3:
            h = (h.view(shape[0], shape[1], -1) * g[:, None, :]).view(x2.shape[0], -1)
        else:
            h = h * g
        y = self.base(x2)
        if torch.is_grad_enabled():
            y = torch.addmm(y, h, self.b_t)
        else:
            y.addmm_(h, self.b_t)  # in place: the base output is not needed again
        return y.view(*shape[:-1], y.shape[-1])


@dataclass
class MixtureModel:
    """A transformers model whose adapted modules are GatedLoRALinear layers."""

    model: nn.Module
    modules: list[str]  # module paths, in gate-column order
    layers: list[int]  # the transformer layer of each module
    k: int
    r: int
    scale: float
    experts: list[str]
    state: GateState = field(default_factory=GateState)

    @property
    def width(self) -> int:
        return self.k * self.r

    def uniform_gates(self, batch: int) -> torch.Tensor:
        """Every expert at 1/K: the mean of the experts' deltas."""
        dev = next(self.model.parameters()).device
        return torch.full((batch, len(self.modules), self.width), 1.0 / self.k, device=dev)

    def expert_gates(self, batch: int, k: int) -> torch.Tensor:
        """Expert k alone: 1 on its r components, 0 elsewhere."""
        g = torch.zeros_like(self.uniform_gates(batch))
        g[:, :, k * self.r : (k + 1) * self.r] = 1.0
        return g

    @contextmanager
    def gated(self, gates: torch.Tensor):
        """Run the model with these gates: (batch, n_modules, K*r), or (n_modules, K*r) for
        every row."""
        if gates.dim() == 2:
            gates = gates.unsqueeze(0)
        if gates.shape[1:] != (len(self.modules), self.width):
            raise ValueError(
                f"gates of shape {tuple(gates.shape)}: expected (batch, {len(self.modules)}, "
                f"{self.width})"
            )
        previous = self.state.gates
        self.state.gates = gates
        try:
            yield self.model
        finally:
            self.state.gates = previous


def inject_mixture(
    model: nn.Module, experts: dict[str, str | Path], base_model: str | None = None
) -> MixtureModel:
    """Replace every module the experts adapt by a GatedLoRALinear holding all K experts.
    Experts must share base model, rank, alpha and target modules (else AdapterMismatch naming
    what differs). The base weights and the experts are frozen."""
    if not experts:
        raise ValueError("a mixture needs at least one expert")
    check_compatible(experts, base_model)
    names = list(experts)
    loaded = [load_expert_weights(experts[n]) for n in names]
    scales = {s for _, s in loaded}
    paths = sorted(loaded[0][0], key=_module_order)
    for name, (weights, _) in zip(names, loaded, strict=True):
        if sorted(weights, key=_module_order) != paths:
            raise AdapterMismatch(f"expert {name!r} adapts other modules than {names[0]!r}")
    if len(scales) != 1:
        raise AdapterMismatch(f"experts differ in scale alpha/r: {sorted(scales)}")
    r = loaded[0][0][paths[0]]["A"].shape[0]
    state = GateState()
    for p in model.parameters():
        p.requires_grad_(False)
    layers = []
    for index, path in enumerate(paths):
        parent_path, _, child = path.rpartition(".")
        parent = model.get_submodule(parent_path)
        base = getattr(parent, child)
        if isinstance(base, GatedLoRALinear):
            raise ValueError(f"{path}: the model already holds a mixture")
        if not isinstance(base, nn.Linear):
            raise AdapterMismatch(f"{path}: adapted module is {type(base).__name__}, not Linear")
        a = torch.cat([w[path]["A"] for w, _ in loaded], dim=0)  # (K*r, d_in)
        b = torch.cat([w[path]["B"] for w, _ in loaded], dim=1)  # (d_out, K*r)
        if a.shape[1] != base.in_features or b.shape[0] != base.out_features:
            raise AdapterMismatch(
                f"{path}: expert shapes {tuple(a.shape)}/{tuple(b.shape)} do not fit the base "
                f"layer ({base.in_features} -> {base.out_features}): another base model?"
            )
        setattr(parent, child, GatedLoRALinear(base, a, b, loaded[0][1], index, state))
        m = _LAYER.search(f".{path}.")
        layers.append(int(m.group(1)) if m else 0)
    return MixtureModel(model, paths, layers, len(names), r, loaded[0][1], names, state)


def _module_order(path: str) -> tuple:
    m = _LAYER.search(f".{path}.")
    return (int(m.group(1)) if m else -1, path)


def layer_selection(n_layers: int, which: str) -> set[int]:
    """Which transformer layers the hypernetwork adapts: all, first_third or last_third."""
    third = max(1, n_layers // 3)
    if which == "all":
        return set(range(n_layers))
    if which == "first_third":
        return set(range(third))
    if which == "last_third":
        return set(range(n_layers - third, n_layers))
    raise ValueError(f"layers: {which!r}; choose all, first_third or last_third")


def describe(mix: MixtureModel) -> dict[str, Any]:
    return {"experts": mix.experts, "k": mix.k, "r": mix.r, "modules": len(mix.modules)}
