"""The Ray Tune trainable of the hypernetwork search (bdc_ray/pipeline/hypernet.py drives it). A
function of its config and the shared data; it never starts Ray."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from typing import Any

from ..config import HypernetConfig
from ..llm import precision


@dataclass(frozen=True)
class TrialData:
    """What every trial shares; Tune hands one copy to each trial's process."""

    examples: list[dict[str, Any]]  # rows with `messages` and `response`
    features: Any  # numpy (n, d): the hypernetwork's input of each example's prompt
    groups: list[str]  # problem of each example: the validation split keeps problems apart
    experts: dict[str, str]  # cluster expert name -> adapter folder
    base_model_spec: str  # what the config named: each trial resolves it on its own node
    encoder: str
    settings: HypernetConfig
    seed: int = 0
    storage: str = ""  # run storage URI: a trial on any node fetches the experts from there

    def on_this_node(self) -> tuple[str, dict[str, str]]:
        """The base model's and the experts' folders on the node this trial runs on: the model
        resolved in this node's cache (also for a run on a shared folder: models are not in
        it), the adapters fetched from run storage into it."""
        from ..llm.models import resolve_model

        base = str(resolve_model(self.base_model_spec))
        if not self.storage:
            return base, self.experts
        from ..storage import RunStorage

        st = RunStorage(self.storage)
        for name in self.experts:
            st.pull(f"experts/{name}")
        experts = {name: str(st.local / "experts" / name) for name in self.experts}
        return base, experts

    def trial_settings(self, config: dict[str, Any]) -> HypernetConfig:
        """This trial's settings: the searched values over the configured ones, validated
        again here (a value Tune sampled outside a field's bounds fails the trial by name)."""
        return HypernetConfig.model_validate({**self.settings.model_dump(), **config})


def trial(config: dict, data: TrialData) -> None:
    """One Tune trial: a hypernetwork with these settings, trained on the frozen mixture."""
    import os

    import torch
    from ray import tune
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..disentangle.train import tokenize_example
    from .hypernet import HyperNetwork
    from .mixture import inject_mixture, layer_selection
    from .train import train_hypernet

    torch.set_num_threads(max(1, int(float(os.environ.get("OMP_NUM_THREADS", "1")))))
    torch.manual_seed(data.seed)
    s = data.trial_settings(config)
    base_model, experts = data.on_this_node()
    tok = AutoTokenizer.from_pretrained(base_model)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    rows, keep = [], []
    for i, ex in enumerate(data.examples):
        row = tokenize_example(tok, ex["messages"], ex["response"], s.max_seq_len)
        if row is not None:
            rows.append(row)
            keep.append(i)
    feats = torch.as_tensor(data.features[keep])
    groups = [data.groups[i] for i in keep]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(
        base_model, dtype=precision.resolve(s.dtype, device)
    ).to(device)
    mix = inject_mixture(model, experts, base_model)
    wanted = layer_selection(model.config.num_hidden_layers, s.layers)
    active = [i for i, layer in enumerate(mix.layers) if layer in wanted]
    hyper = HyperNetwork(
        feats.shape[1], active, len(mix.modules), mix.k, mix.r, s.hidden, s.tau
    ).to(device)
    meta = {
        "base_model": base_model,
        "base_model_spec": data.base_model_spec,
        "experts": mix.experts,
        "modules": mix.modules,
        "encoder": data.encoder,
        "layers": s.layers,
        "lr": s.lr,
        "weight_decay": s.weight_decay,
    }

    def report(metrics: dict, net: HyperNetwork) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            net.save(tmp, meta)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))

    train_hypernet(
        mix,
        hyper,
        rows,
        feats,
        groups,
        pad,
        lr=s.lr,
        weight_decay=s.weight_decay,
        epochs=s.epochs,
        batch_size=s.batch_size,
        val_fraction=s.val_fraction,
        patience=s.patience,
        seed=data.seed,
        on_epoch=report,
    )
