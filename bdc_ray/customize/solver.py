"""The customised solver: base model + gated mixture of the cluster experts + hypernetwork,
generating for a batch of prompts, each row with its own gates (returned with the text)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..disentangle.embed import embed_texts, load_encoder
from ..llm.base import Completion, Prompt, Sampling, validate_prompts
from ..llm.transformers_backend import TransformersBackend
from .hypernet import HyperNetwork, features
from .mixture import MixtureModel, inject_mixture

log = logging.getLogger(__name__)


def gate_text(prompt: Prompt) -> str:
    """What the hypernetwork reads: the user turns (as in training), or the raw text."""
    if isinstance(prompt, str):
        return prompt
    return "\n\n".join(m["content"] for m in prompt if m["role"] != "system")


class _GatedBackend(TransformersBackend):
    """The transformers backend whose every micro-batch runs under its rows' gates."""

    pack_cpu_linears = False  # the mixture wraps the base model's nn.Linear layers

    mix: MixtureModel
    row_gates: torch.Tensor | None = None
    row_max_tokens: list[int] | None = None
    on_token: Callable[[int, int], None] | None = None

    def _generate_rows(self, rows, batch, sampling):
        extra: dict[str, Any] = {}
        if self.row_max_tokens is not None:
            extra["row_max_tokens"] = [self.row_max_tokens[i] for i in rows]
        if self.on_token is not None:
            cb = self.on_token
            extra["on_token"] = lambda j, tok: cb(rows[j], tok)
        gates = self.row_gates[rows]
        with self.mix.gated(gates):
            return self._generate_batch(
                batch,
                sampling,
                rows_context=lambda sub: self.mix.gated(gates[sub]),
                seeds=self.seeds_of(rows),
                **extra,
            )


def solver_folder(spec: str | Path) -> Path:
    """This node's folder of a run's customised solver: the run folder itself, or, for a run in
    a store, its hypernetwork, the experts that gates and the cluster centroids fetched from
    there into this node's cache (what an evaluation task or a Serve replica on any node
    needs, and nothing else of the run)."""
    import json

    from ..storage import RunStorage, is_uri

    if not is_uri(spec):
        return Path(spec)
    st = RunStorage(str(spec))
    st.pull("hypernet")
    meta_path = st.local / "hypernet" / "hypernet.json"
    if meta_path.is_file():
        for name in json.loads(meta_path.read_text()).get("experts", []):
            st.pull(f"experts/{name}")
    st.pull("clusters/centroids.npy")
    return st.local


class CustomizedSolver:
    """Loads base model, experts, encoder, centroids and hypernetwork from a run directory."""

    def __init__(
        self,
        run_dir: str | Path,
        hypernet_dir: str | Path | None = None,
        dtype: str = "auto",
        device: str | None = None,
        max_batch_size: int = 16,
        num_threads: int | None = None,
    ) -> None:
        run = Path(run_dir)
        hdir = Path(hypernet_dir) if hypernet_dir else run / "hypernet"
        if not (hdir / "hypernet.json").is_file():
            raise FileNotFoundError(f"{hdir}: no trained hypernetwork (run jobs/tune_hypernet.py)")
        self.hyper, self.meta = HyperNetwork.load(hdir)
        from ..llm.models import resolve_model

        base = self.meta.get("base_model_spec")
        base = str(resolve_model(base)) if base else self.meta["base_model"]
        self.backend = _GatedBackend(base, dtype, max_batch_size, device, num_threads)
        experts = {n: run / "experts" / n for n in self.meta["experts"]}
        self.mix = inject_mixture(self.backend.model, experts, base)
        if self.mix.modules != self.meta["modules"]:
            raise ValueError(
                f"{hdir}: the hypernetwork was trained for other modules than the experts in "
                f"{run / 'experts'} adapt; retrain it"
            )
        self.backend.mix = self.mix
        self.hyper.to(self.backend.device)
        self.encoder = load_encoder(self.meta["encoder"], device=str(self.backend.device))
        self.centroids = np.load(run / "clusters" / "centroids.npy")
        self.name = f"customized:{Path(self.meta['base_model']).name}"

    def features(self, prompts: list[Prompt]) -> torch.Tensor:
        """The hypernetwork's input: [embedding, cosine to each centroid] per prompt."""
        emb = embed_texts(self.encoder, [gate_text(p) for p in prompts])
        return features(emb, self.centroids)

    @torch.no_grad()
    def gates(self, prompts: list[Prompt], feats: torch.Tensor | None = None) -> torch.Tensor:
        """(batch, n_modules, K*r) gates for these prompts."""
        feats = self.features(prompts) if feats is None else feats
        return self.hyper(feats.to(self.backend.device))

    def nearest_clusters(self, feats: torch.Tensor) -> list[int]:
        """Each prompt's closest cluster centroid (cosine): its problem category."""
        k = self.centroids.shape[0]
        return [int(i) for i in feats[:, -k:].argmax(dim=1)]

    def generate(
        self,
        prompts: list[Prompt],
        sampling: Sampling,
        *,
        gates: torch.Tensor | None = None,
        row_max_tokens: list[int] | None = None,
        on_token: Callable[[int, int], None] | None = None,
        seeds: list[int | None] | None = None,
    ) -> list[Completion]:
        """Completions in prompt order; each carries `meta["gates"]`: {expert: its share of
        the gate mass, averaged over modules} (K numbers summing to 1), and
        `meta["nearest_cluster"]`: the prompt's closest centroid. `gates()` gives the full
        (n_modules, K*r) gates.

        Serving options: `gates` replaces the hypernetwork's (batch, n_modules, K*r) gates
        (e.g. one expert alone for some rows); `row_max_tokens` gives each prompt its own
        budget (`sampling.max_tokens` must be their maximum); `on_token(prompt_index,
        token_id)` is called with every new token as it is generated; `seeds` gives each row its
        own sampling seed (the backend's `generate`)."""
        validate_prompts(prompts)
        if row_max_tokens is not None and len(row_max_tokens) != len(prompts):
            raise ValueError("row_max_tokens needs one budget per prompt")
        feats = self.features(prompts)
        g = self.gates(prompts, feats) if gates is None else gates.to(self.backend.device)
        self.backend.row_gates = g
        self.backend.row_max_tokens = row_max_tokens
        self.backend.on_token = on_token
        try:
            out = self.backend.generate(prompts, sampling, seeds)
        finally:
            self.backend.row_gates = None
            self.backend.row_max_tokens = None
            self.backend.on_token = None
        per_expert = self.expert_weights(g)
        nearest = self.nearest_clusters(feats)
        for c, w, near in zip(out, per_expert, nearest, strict=True):
            c.meta["gates"] = dict(zip(self.mix.experts, w, strict=True))
            c.meta["nearest_cluster"] = near
        return out

    def expert_weights(self, gates: torch.Tensor) -> list[list[float]]:
        """Each row's weight per expert: its share of the gate mass, averaged over modules."""
        k, r = self.mix.k, self.mix.r
        mass = gates.reshape(gates.shape[0], gates.shape[1], k, r).sum(-1)  # (B, M, K)
        share = mass / mass.sum(-1, keepdim=True)
        return [[round(float(x), 4) for x in row] for row in share.mean(1).cpu()]

    def info(self) -> dict[str, Any]:
        return {
            "experts": self.mix.experts,
            "k": self.mix.k,
            "r": self.mix.r,
            "modules": len(self.mix.modules),
            "adapted_layers": self.meta.get("layers"),
        }
