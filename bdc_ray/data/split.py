"""Deterministic train/test split of problem ids, stored in the run directory."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from .problems import Problem


@dataclass(frozen=True)
class Split:
    train: list[str]
    test: list[str]
    seed: int
    test_fraction: float

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=1)


def split_ids(ids: list[str], test_fraction: float, seed: int) -> Split:
    """Same ids, fraction and seed give the same split on any machine: the ids are sorted
    first, then shuffled by a seeded generator (Python's Mersenne Twister is specified)."""
    if len(set(ids)) != len(ids):
        raise ValueError("problem ids must be unique to split them")
    order = sorted(ids)
    random.Random(seed).shuffle(order)
    n_test = max(1, round(len(order) * test_fraction)) if len(order) > 1 else 0
    n_test = min(n_test, len(order) - 1) if len(order) > 1 else 0
    return Split(train=order[n_test:], test=order[:n_test], seed=seed, test_fraction=test_fraction)


def make_split(problems: list[Problem], data_cfg, run_dir: str | Path | None = None) -> Split:
    """Split the problems as `data_cfg` says and record the split in ``run/problems/split.json``.
    ``max_train`` / ``max_test`` take a prefix of each side, so a small demo slice is a subset
    of the full split, never a different split."""
    split = split_ids([p.id for p in problems], data_cfg.test_fraction, data_cfg.split_seed)
    if data_cfg.max_train is not None or data_cfg.max_test is not None:
        split = Split(
            train=split.train[: data_cfg.max_train],
            test=split.test[: data_cfg.max_test],
            seed=split.seed,
            test_fraction=split.test_fraction,
        )
    if run_dir is not None:
        out = Path(run_dir) / "problems" / "split.json"
        text = split.to_json()
        if not out.is_file() or out.read_text() != text:  # unchanged: leave it (and its mtime)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text)
    return split
