import numpy as np
import pytest

from bdc_ray.disentangle.cluster import (
    ClusterError,
    cluster_embeddings,
    elbow,
    normalise,
    plot_clusters,
    silhouette,
    spherical_kmeans,
)


def planted(k=4, per=25, d=48, noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    centres = normalise(rng.normal(size=(k, d)))
    x = np.concatenate([centres[i] + noise * rng.normal(size=(per, d)) for i in range(k)])
    return normalise(x), np.repeat(np.arange(k), per)


def same_partition(a, b) -> bool:
    """True when the two labelings split the points identically (up to renaming)."""
    pairs = set(zip(a.tolist(), b.tolist(), strict=True))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def test_fixed_k_recovers_planted_clusters():
    x, truth = planted()
    res = cluster_embeddings(x, 4, seed=0)
    assert res.k == 4 and same_partition(res.labels, truth)
    assert np.allclose(np.linalg.norm(res.centroids, axis=1), 1.0, atol=1e-5)
    # assignment is by highest cosine to a centroid
    assert (res.labels == (x @ res.centroids.T).argmax(1)).all()
    assert res.silhouette > 0.8


@pytest.mark.parametrize("k", [2, 3, 5])
def test_auto_picks_the_planted_k_by_the_elbow(k):
    x, truth = planted(k=k, seed=k)
    res = cluster_embeddings(x, "auto", k_min=2, k_max=6, seed=0)
    assert res.chosen_by == "elbow"
    assert res.k == k and same_partition(res.labels, truth)
    assert [r["k"] for r in res.sweep] == [2, 3, 4, 5, 6]
    assert [r["k"] for r in res.sweep if r["chosen"]] == [k]
    sse = [r["sse"] for r in res.sweep]
    assert sse[k - 2] < 0.5 * sse[0] or k == 2
    assert all(r["silhouette"] is not None for r in res.sweep)


def test_sse_matches_its_definition():
    x, _ = planted()
    cent, labels, sse = spherical_kmeans(x, 4, seed=1)
    assert sse == pytest.approx(float(((x - cent[labels]) ** 2).sum()), rel=1e-4)


def test_silhouette_matches_a_brute_force_computation():
    x, truth = planted(k=3, per=6, noise=0.2, seed=3)
    dist = 1 - x @ x.T
    s = []
    for i in range(len(x)):
        same = [j for j in range(len(x)) if truth[j] == truth[i] and j != i]
        a = np.mean([dist[i, j] for j in same])
        b = min(
            np.mean([dist[i, j] for j in range(len(x)) if truth[j] == c])
            for c in set(truth.tolist()) - {truth[i]}
        )
        s.append((b - a) / max(a, b))
    assert silhouette(x, truth) == pytest.approx(float(np.mean(s)), abs=1e-5)
    assert silhouette(x, np.zeros(len(x), dtype=int)) is None


def test_elbow_finds_the_knee():
    assert elbow([2, 3, 4, 5, 6], [100, 60, 10, 8, 7]) == 4
    assert elbow([2, 3, 4, 5, 6], [100, 20, 15, 12, 10]) == 3
    with pytest.raises(ValueError):
        elbow([2, 3], [1, 0])


def test_too_few_examples_give_clear_errors_or_a_capped_sweep():
    x, _ = planted(k=2, per=2)
    with pytest.raises(
        ClusterError, match=r"cluster.k=5 needs at least 5 training examples, got 4"
    ):
        cluster_embeddings(x, 5)
    with pytest.raises(ClusterError, match="no training examples"):
        cluster_embeddings(np.zeros((0, 8)), 3)
    res = cluster_embeddings(x, "auto", k_min=2, k_max=6)  # 4 examples: k <= 3
    assert [r["k"] for r in res.sweep] == [2, 3] and res.k == 2
    res = cluster_embeddings(x[:3], "auto", k_min=2, k_max=6)  # SSE at k=1, 2 only
    assert [r["k"] for r in res.sweep] == [2] and res.chosen_by == "silhouette"
    with pytest.raises(ClusterError, match="allow at most k=1"):
        cluster_embeddings(x[:2], "auto")


def test_plot_is_written(tmp_path):
    x, truth = planted(k=3, per=5)
    res = cluster_embeddings(x, 3)
    path = plot_clusters(x, res.labels, res.centroids, tmp_path / "c.png", kinds=["p2c"] * 15)
    assert path.stat().st_size > 5000
