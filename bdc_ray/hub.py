"""Fetching from the Hugging Face hub: online first, then the local hub cache (only the cache
under HF_HUB_OFFLINE=1). Models, encoders and datasets all resolve this way."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}


def snapshot(repo: str, **kw: Any) -> Path:
    """The local folder of `repo` (snapshot_download's keywords pass through). Raises the
    first attempt's error when neither the hub nor the cache has it."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo, local_files_only=offline(), **kw))
    except Exception as first:  # noqa: BLE001 - no network, no such repo, refused: many classes
        if not offline():
            try:  # the network may be gone while the local cache holds it
                return Path(snapshot_download(repo, local_files_only=True, **kw))
            except Exception:  # noqa: BLE001
                pass
        raise first


def first_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
