import multiprocessing as mp
import os
import time

import pytest

from bdc_ray.llm import models
from bdc_ray.llm.models import EMBEDDED, ModelNotFoundError, resolve_model


def test_embedded_model_is_converted_once_and_reused(embedded_model_path, monkeypatch):
    assert (embedded_model_path / "config.json").is_file()
    assert list(embedded_model_path.glob("*.safetensors"))
    stamp = (embedded_model_path / ".bdc-complete").stat().st_mtime_ns

    def no_rebuild(_out):
        raise AssertionError("the cached conversion should have been reused")

    monkeypatch.setattr(models, "_convert_smollm2", no_rebuild)
    t = time.perf_counter()
    assert resolve_model(EMBEDDED) == embedded_model_path
    assert time.perf_counter() - t < 1.0
    assert (embedded_model_path / ".bdc-complete").stat().st_mtime_ns == stamp


@pytest.mark.real_model
def test_converted_weights_equal_the_gguf_model(embedded_model_path):
    import torch
    from transformers import AutoModelForCausalLM

    gguf = models.gguf_path()
    ref = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    ours = AutoModelForCausalLM.from_pretrained(str(embedded_model_path))
    ids = torch.tensor([[1, 504, 3458, 314, 253, 1345]])
    with torch.no_grad():
        assert torch.equal(ref(ids).logits, ours(ids).logits)


def _racer(cache: str, log: str) -> None:
    os.environ["BDC_RAY_CACHE"] = cache

    def build(out):
        with open(log, "a") as fh:
            fh.write("built\n")
        time.sleep(0.5)  # long enough for the other process to arrive and wait
        (out / "weights").write_text("w")

    models._build_once(models.cache_dir() / "models" / "m", build)


def test_concurrent_builders_build_once_and_both_see_a_complete_folder(tmp_path):
    log = tmp_path / "log"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_racer, args=(str(tmp_path / "cache"), str(log))) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert log.read_text() == "built\n"
    target = tmp_path / "cache" / "models" / "m"
    assert (target / "weights").read_text() == "w" and (target / ".bdc-complete").exists()
    leftovers = [p.name for p in target.parent.iterdir() if p.name.startswith(".m.") and p.is_dir()]
    assert leftovers == []


def test_a_failed_build_leaves_nothing_behind_and_can_be_retried(tmp_path, monkeypatch):
    monkeypatch.setenv("BDC_RAY_CACHE", str(tmp_path))
    target = models.cache_dir() / "models" / "x"

    def boom(out):
        (out / "partial").write_text("p")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        models._build_once(target, boom)
    assert not target.exists()
    assert [p for p in target.parent.iterdir() if p.is_dir()] == []
    models._build_once(target, lambda out: (out / "ok").write_text("1"))
    assert (target / "ok").exists()


def test_local_folder_and_its_errors(tiny_model_path, tmp_path):
    assert resolve_model(str(tiny_model_path)) == tiny_model_path
    with pytest.raises(ModelNotFoundError, match="has no config.json"):
        resolve_model(str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="no such folder"):
        resolve_model("./nowhere/model")


def _fake_hub_cache(root, repo_id: str, files: dict[str, str]):
    """The layout huggingface_hub uses for a downloaded snapshot."""
    commit = "0" * 40
    repo = root / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    for name, text in files.items():
        (snap / name).write_text(text)
    return snap


def test_hub_id_resolves_from_the_local_hub_cache_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    snap = _fake_hub_cache(tmp_path, "acme/coder-1b", {"config.json": "{}"})
    assert resolve_model("acme/coder-1b").resolve() == snap.resolve()
    with pytest.raises(ModelNotFoundError, match="could not be loaded from the Hugging Face hub"):
        resolve_model("acme/not-downloaded")


def test_tiny_model_is_small_and_deterministic(tiny_model_path):
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(tiny_model_path)
    assert cfg.num_hidden_layers == 2 and cfg.hidden_size == 64
