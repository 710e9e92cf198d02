"""The input-aware hypernetwork (docs/method.md#customize-the-input-aware-hypernetwork).

Input: the prompt's embedding (the Disentangle encoder, L2-normalised) concatenated with its
cosine similarities to the K cluster centroids. Per adapted (layer, module): an MLP
in -> hidden -> ReLU -> K*r logits; G = r * softmax(z / tau) over all K*r. The last layer is
zero-initialised, so training starts from uniform gates: the experts' mean.
All modules' MLPs run as two batched einsums.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn


def features(
    embeddings: np.ndarray | torch.Tensor, centroids: np.ndarray | torch.Tensor
) -> torch.Tensor:
    """[embedding, cos(embedding, centroid_k) for k] per row."""
    e = torch.as_tensor(np.asarray(embeddings), dtype=torch.float32)
    c = torch.as_tensor(np.asarray(centroids), dtype=torch.float32)
    e = e / e.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return torch.cat([e, e @ c.T], dim=1)


class HyperNetwork(nn.Module):
    def __init__(
        self,
        in_dim: int,
        active: list[int],
        n_modules: int,
        k: int,
        r: int,
        hidden: int = 64,
        tau: float = 1.0,
    ) -> None:
        super().__init__()
        if not active:
            raise ValueError("the hypernetwork needs at least one adapted module")
        self.config = {
            "in_dim": in_dim,
            "active": list(active),
            "n_modules": n_modules,
            "k": k,
            "r": r,
            "hidden": hidden,
            "tau": tau,
        }
        m, width = len(active), k * r
        self.register_buffer("active", torch.tensor(active, dtype=torch.long), persistent=False)
        self.w1 = nn.Parameter(torch.empty(m, in_dim, hidden))
        self.b1 = nn.Parameter(torch.zeros(m, hidden))
        self.w2 = nn.Parameter(torch.zeros(m, hidden, width))  # zero: start from the mean
        self.b2 = nn.Parameter(torch.zeros(m, width))
        bound = 1.0 / math.sqrt(in_dim)  # nn.Linear's default init, per module
        nn.init.uniform_(self.w1, -bound, bound)
        self.k, self.r, self.tau, self.n_modules = k, r, tau, n_modules

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(torch.einsum("bi,mih->bmh", x, self.w1) + self.b1)
        return torch.einsum("bmh,mhw->bmw", h, self.w2) + self.b2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Gates for every module of the mixture, (batch, n_modules, K*r): the hypernetwork's
        for adapted modules, uniform (the experts' mean) for the others."""
        g_active = self.r * torch.softmax(self.logits(x) / self.tau, dim=-1)
        gates = torch.full(
            (x.shape[0], self.n_modules, self.k * self.r),
            1.0 / self.k,
            device=x.device,
            dtype=g_active.dtype,
        )
        return gates.index_copy(1, self.active, g_active)

    def save(self, folder: str | Path, meta: dict[str, Any] | None = None) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), folder / "hypernet.pt")
        (folder / "hypernet.json").write_text(json.dumps({**self.config, **(meta or {})}, indent=1))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> tuple[HyperNetwork, dict[str, Any]]:
        folder = Path(folder)
        meta = json.loads((folder / "hypernet.json").read_text())
        net = cls(
            **{k: meta[k] for k in ("in_dim", "active", "n_modules", "k", "r", "hidden", "tau")}
        )
        net.load_state_dict(
            torch.load(folder / "hypernet.pt", map_location="cpu", weights_only=True)
        )
        return net.eval(), meta
