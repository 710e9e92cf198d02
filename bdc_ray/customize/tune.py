"""The Ray Tune trainable of the hypernetwork search (jobs/tune_hypernet.py drives it). A
function of its config and the shared data; it never starts Ray."""

from __future__ import annotations

import tempfile


def trial(config: dict, data: dict) -> None:
    """One Tune trial: a hypernetwork with these settings, trained on the frozen mixture."""
    import os

    import torch
    from ray import tune
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bdc_ray.customize.hypernet import HyperNetwork
    from bdc_ray.customize.mixture import inject_mixture, layer_selection
    from bdc_ray.customize.train import train_hypernet
    from bdc_ray.disentangle.train import tokenize_example

    torch.set_num_threads(max(1, int(float(os.environ.get("OMP_NUM_THREADS", "1")))))
    torch.manual_seed(data["seed"])
    s = data["settings"]
    tok = AutoTokenizer.from_pretrained(data["base_model"])
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    rows, keep = [], []
    for i, ex in enumerate(data["examples"]):
        row = tokenize_example(tok, ex["messages"], ex["response"], s["max_seq_len"])
        if row is not None:
            rows.append(row)
            keep.append(i)
    feats = torch.as_tensor(data["features"][keep])
    groups = [data["groups"][i] for i in keep]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(data["base_model"]).to(device)
    mix = inject_mixture(model, data["experts"], data["base_model"])
    wanted = layer_selection(model.config.num_hidden_layers, config["layers"])
    active = [i for i, layer in enumerate(mix.layers) if layer in wanted]
    hyper = HyperNetwork(
        feats.shape[1], active, len(mix.modules), mix.k, mix.r, config["hidden"], config["tau"]
    ).to(device)
    meta = {
        "base_model": data["base_model"],
        "base_model_spec": data["base_model_spec"],
        "experts": mix.experts,
        "modules": mix.modules,
        "encoder": data["encoder"],
        "layers": config["layers"],
        "lr": config["lr"],
        "weight_decay": config["weight_decay"],
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
        lr=config["lr"],
        weight_decay=config["weight_decay"],
        epochs=s["epochs"],
        batch_size=s["batch_size"],
        val_fraction=s["val_fraction"],
        patience=s["patience"],
        seed=data["seed"],
        on_epoch=report,
    )
