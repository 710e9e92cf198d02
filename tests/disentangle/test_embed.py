"""The Ray Data embedding (jobs/disentangle.py) equals in-process embedding of the same texts."""

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
