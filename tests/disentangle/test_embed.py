"""The Ray Data embedding (jobs/disentangle.py) equals in-process embedding of the same texts."""

import os

import numpy as np


def test_ray_data_embedding_matches_in_process(ray_session, reference_rows):
    from bdc_ray.config import Config
    from bdc_ray.disentangle.embed import embed_texts, load_encoder
    from bdc_ray.disentangle.examples import example_text
    from bdc_ray.pipeline.disentangle import embed_with_ray_data

    texts = [example_text(r) for r in reference_rows] + ["short", "def f(): pass"]
    # several actors and small batches: order must survive Ray Data's parallelism
    cfg = Config.model_validate(
        {"cluster": {"embed_batch_size": 4, "embed_workers": 2, "embed_cpus": 0.5}}
    )
    got = embed_with_ray_data(texts, cfg)
    want = embed_texts(load_encoder("all-minilm-l6-v2"), texts, batch_size=64)
    assert got.shape == (18, 384)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert np.allclose(got, want, atol=1e-5)
    # and it is semantic: the two code answers about paren groups are nearer each other than
    # to "short"
    assert float(want[0] @ want[6]) > float(want[0] @ want[16])


def test_a_hub_encoder_is_fetched_online_first_then_from_the_cache_and_named_when_neither(
    monkeypatch, tmp_path
):
    """A hub id may download (the embedded default never does): the first attempt is online,
    the local hub cache answers when the network does not, and loading leaves the process
    free to reach the hub afterwards. Tested on a local hub cache, offline."""
    import huggingface_hub
    import pytest

    import bdc_ray.disentangle.embed as embed

    real_download = huggingface_hub.snapshot_download
    attempts = []

    def no_network(repo_id, local_files_only=False, **kw):
        attempts.append(local_files_only)
        if not local_files_only:
            raise ConnectionError("no route to huggingface.co")
        return real_download(repo_id, local_files_only=True, **kw)

    cache = tmp_path / "hub"
    snap = cache / "models--bdc--minilm" / "snapshots" / "abc123"
    snap.parent.mkdir(parents=True)
    snap.symlink_to(embed.resolve_encoder(embed.EMBEDDED_ENCODER))
    (cache / "models--bdc--minilm" / "refs").mkdir()
    (cache / "models--bdc--minilm" / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_network)

    encoder = embed.load_encoder("bdc/minilm")
    assert attempts == [False, True]  # online first, then the cache
    assert embed.embed_texts(encoder, ["def f(): pass"]).shape == (1, 384)
    assert "HF_HUB_OFFLINE" not in os.environ  # not left set for later loads
    with pytest.raises(ValueError, match="cannot load 'bdc/missing' from the Hugging Face hub"):
        embed.resolve_encoder("bdc/missing")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    attempts.clear()
    with pytest.raises(ValueError, match=r"local hub cache \(HF_HUB_OFFLINE is set\)"):
        embed.resolve_encoder("bdc/missing")
    assert attempts == [True]  # offline: the cache only
