"""Training the hypernetwork (docs/method.md#customize-the-input-aware-hypernetwork): base model and experts frozen, only the
hypernetwork learns, by next-token cross-entropy on response tokens (transformers shifts the
labels: position t predicts token t+1), with a validation split by problem and early stopping.
"""

from __future__ import annotations

import copy
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import torch

from ..disentangle.train import collate
from .hypernet import HyperNetwork
from .mixture import MixtureModel

log = logging.getLogger(__name__)


def split_by_problem(
    groups: list[str], val_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Row indices (train, val); all rows of a problem fall on the same side, so validation
    measures problems the hypernetwork has not seen."""
    problems = sorted(set(groups))
    if len(problems) < 2:
        log.warning("one problem only: validating on the training rows")
        idx = list(range(len(groups)))
        return idx, idx
    random.Random(seed).shuffle(problems)
    n_val = min(len(problems) - 1, max(1, round(val_fraction * len(problems))))
    val_set = set(problems[:n_val])
    train = [i for i, g in enumerate(groups) if g not in val_set]
    val = [i for i, g in enumerate(groups) if g in val_set]
    return train, val


def batch_loss(
    mix: MixtureModel,
    hyper: HyperNetwork,
    rows: list[dict],
    feats: torch.Tensor,
    idx: list[int],
    pad_id: int,
) -> tuple[torch.Tensor, int]:
    """Mean response-token loss of rows `idx` and the number of tokens it averages."""
    dev = next(mix.model.parameters()).device
    b = {k: v.to(dev) for k, v in collate([rows[i] for i in idx], pad_id).items()}
    gates = hyper(feats[idx].to(dev))
    with mix.gated(gates) as model:
        out = model(**b)
    n = int((b["labels"][:, 1:] != -100).sum())
    return out.loss, n


@torch.no_grad()
def evaluate(mix, hyper, rows, feats, idx, pad_id, batch_size) -> float:
    total, count = 0.0, 0
    for s in range(0, len(idx), batch_size):
        loss, n = batch_loss(mix, hyper, rows, feats, idx[s : s + batch_size], pad_id)
        total += loss.item() * n
        count += n
    return total / max(count, 1)


def train_hypernet(
    mix: MixtureModel,
    hyper: HyperNetwork,
    rows: list[dict],
    feats: torch.Tensor,
    groups: list[str],
    pad_id: int,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    epochs: int = 3,
    batch_size: int = 4,
    val_fraction: float = 0.2,
    patience: int = 2,
    seed: int = 0,
    on_epoch: Callable[[dict[str, Any], HyperNetwork], None] | None = None,
) -> dict[str, Any]:
    """Train in place; `hyper` ends holding the best validation state. Returns the history."""
    train_idx, val_idx = split_by_problem(groups, val_fraction, seed)
    mix.model.eval()  # no dropout in the frozen model: the loss is a function of the gates
    for p in mix.model.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(hyper.parameters(), lr=lr, weight_decay=weight_decay)
    rng = random.Random(seed)
    hyper.eval()
    start_val = evaluate(mix, hyper, rows, feats, val_idx, pad_id, batch_size)
    best, best_state, bad = start_val, copy.deepcopy(hyper.state_dict()), 0
    history = {"val_loss": [start_val], "train_loss": [], "epoch_s": []}
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        hyper.train()
        order = list(train_idx)
        rng.shuffle(order)
        total, count = 0.0, 0
        for s in range(0, len(order), batch_size):
            loss, n = batch_loss(mix, hyper, rows, feats, order[s : s + batch_size], pad_id)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * n
            count += n
        hyper.eval()
        val = evaluate(mix, hyper, rows, feats, val_idx, pad_id, batch_size)
        history["train_loss"].append(total / max(count, 1))
        history["val_loss"].append(val)
        history["epoch_s"].append(round(time.perf_counter() - t0, 2))
        improved = val < best - 1e-6
        if improved:
            best, best_state, bad = val, copy.deepcopy(hyper.state_dict()), 0
        else:
            bad += 1
        report = {
            "epoch": epoch,
            "train_loss": history["train_loss"][-1],
            "val_loss": val,
            "best_val_loss": best,
            "start_val_loss": start_val,
        }
        if on_epoch:
            on_epoch(report, hyper)
        if bad >= patience:
            log.info("early stop after epoch %d (no better val loss in %d epochs)", epoch, bad)
            break
    hyper.load_state_dict(best_state)
    return {
        **history,
        "best_val_loss": best,
        "mean_experts_val_loss": start_val,  # zero-initialised: the experts' mean
        "train_rows": len(train_idx),
        "val_rows": len(val_idx),
    }
