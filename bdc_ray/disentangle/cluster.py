"""Spherical k-means with faiss, the k sweep (elbow of SSE, silhouette reported), and the 2-D
projection plot (docs/method.md#disentangle-disenlora)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


class ClusterError(ValueError):
    """Clustering cannot run as configured (e.g. fewer examples than clusters)."""


@dataclass
class Clustering:
    k: int
    centroids: np.ndarray  # (k, d), unit rows
    labels: np.ndarray  # (n,), by highest cosine to a centroid
    sse: float
    silhouette: float | None
    sweep: list[dict[str, Any]] = field(default_factory=list)
    chosen_by: str = "fixed"


def normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


def spherical_kmeans(
    x: np.ndarray, k: int, seed: int = 0, niter: int = 50, nredo: int = 5
) -> tuple[np.ndarray, np.ndarray, float]:
    """faiss k-means on unit vectors with unit centroids; returns (centroids, labels, SSE).
    Points go to the centroid of highest cosine; SSE = sum ||x - c||^2 = sum 2 (1 - cos)."""
    import faiss

    x = normalise(x)
    n, d = x.shape
    if k > n:
        raise ClusterError(f"k={k} clusters need at least {k} examples, got {n}")
    km = faiss.Kmeans(
        d,
        k,
        niter=niter,
        nredo=nredo,
        spherical=True,
        seed=seed,
        verbose=False,
        min_points_per_centroid=1,  # small runs are expected; do not warn per point
        max_points_per_centroid=1 << 20,
    )
    km.train(x)
    centroids = normalise(km.centroids)
    sims = x @ centroids.T
    labels = sims.argmax(axis=1)
    sse = float(np.sum(2.0 - 2.0 * sims[np.arange(n), labels]))
    return centroids, labels.astype(np.int64), max(sse, 0.0)


def silhouette(x: np.ndarray, labels: np.ndarray) -> float | None:
    """Mean silhouette with cosine distance; None when it is undefined (one cluster, or every
    point alone)."""
    x = normalise(x)
    labels = np.asarray(labels)
    uniq = np.unique(labels)
    n = len(labels)
    if len(uniq) < 2 or len(uniq) >= n:
        return None
    dist = np.clip(1.0 - x @ x.T, 0.0, 2.0)
    scores = np.zeros(n)
    for i in range(n):
        own = labels == labels[i]
        if own.sum() <= 1:
            continue  # a singleton's silhouette is 0 by convention
        a = dist[i, own].sum() / (own.sum() - 1)
        b = min(dist[i, labels == c].mean() for c in uniq if c != labels[i])
        scores[i] = (b - a) / max(a, b) if max(a, b) > 0 else 0.0
    return float(scores.mean())


def elbow(ks: list[int], sse: list[float]) -> int:
    """The elbow of an SSE curve: the k after which adding a cluster stops paying, i.e. the
    interior point with the largest ratio of the drop into it to the drop out of it,
    (SSE[k-1] - SSE[k]) / (SSE[k] - SSE[k+1]). The first and last points only serve as
    neighbours; callers pass one extra k on each side of the range they choose from."""
    if len(ks) < 3:
        raise ValueError("the elbow needs at least 3 values of k")
    s = np.asarray(sse, dtype=float)
    eps = 1e-9 + 1e-3 * float(s.max() - s.min())  # flat tails must not divide by ~0
    ratios = [(s[i - 1] - s[i]) / max(s[i] - s[i + 1], eps) for i in range(1, len(s) - 1)]
    return int(ks[1 + int(np.argmax(ratios))])


def _drop_empty(c: Clustering) -> Clustering:
    used = np.unique(c.labels)
    if len(used) == c.k:
        return c
    log.warning("k-means left %d of %d clusters empty; they are dropped", c.k - len(used), c.k)
    remap = {int(old): new for new, old in enumerate(used)}
    c.centroids = c.centroids[used]
    c.labels = np.array([remap[int(label)] for label in c.labels], dtype=np.int64)
    c.k = len(used)
    return c


def cluster_embeddings(
    x: np.ndarray,
    k: int | str = 3,
    k_min: int = 2,
    k_max: int = 6,
    seed: int = 0,
    niter: int = 50,
    nredo: int = 5,
) -> Clustering:
    """Fixed k, or ``"auto"``: sweep k_min..k_max, choose the elbow of SSE.

    Too few examples: a fixed k larger than the number of examples raises ClusterError naming
    both; ``auto`` caps k_max at n - 1 (silhouette needs a point outside each cluster) and, when
    the SSE curve has fewer than three points, picks the highest silhouette instead.
    """
    x = normalise(x)
    n = len(x)
    if n == 0:
        raise ClusterError(
            "no training examples to cluster: the Boost stage verified no train problem on its "
            "hidden tests; explore more problems (search.train_limit), or set "
            "cluster.reference_solutions=true"
        )
    if k != "auto":
        k = int(k)
        if k > n:
            raise ClusterError(
                f"cluster.k={k} needs at least {k} training examples, got {n}; lower cluster.k, "
                "use cluster.k=auto, or explore more problems"
            )
        cent, labels, sse = spherical_kmeans(x, k, seed, niter, nredo)
        c = Clustering(k, cent, labels, sse, silhouette(x, labels))
        c.sweep = [{"k": k, "sse": sse, "silhouette": c.silhouette}]
        return _drop_empty(c)
    hi = min(k_max, n - 1)
    if hi < k_min:
        raise ClusterError(
            f"cluster.k=auto sweeps k={k_min}..{k_max} but {n} training examples allow at most "
            f"k={n - 1}; use a fixed cluster.k or explore more problems"
        )
    results, edge_sse = {}, {}
    for kk in range(k_min, hi + 1):
        cent, labels, sse = spherical_kmeans(x, kk, seed, niter, nredo)
        results[kk] = Clustering(kk, cent, labels, sse, silhouette(x, labels))
    # one k beyond each end of the range, so every candidate has two neighbours for the elbow
    for kk in (k_min - 1, hi + 1):
        if 1 <= kk <= n - 1:
            edge_sse[kk] = spherical_kmeans(x, kk, seed, niter, nredo)[2]
    ks = sorted(results)
    curve = sorted([(kk, r.sse) for kk, r in results.items()] + list(edge_sse.items()))
    if len(curve) >= 3:
        best, how = elbow([c[0] for c in curve], [c[1] for c in curve]), "elbow"
    else:
        best = max(ks, key=lambda kk: results[kk].silhouette or -1.0)
        how = "silhouette"
    sweep = [
        {
            "k": kk,
            "sse": results[kk].sse,
            "silhouette": results[kk].silhouette,
            "chosen": kk == best,
        }
        for kk in ks
    ]
    c = results[best]
    c.sweep, c.chosen_by = sweep, how
    return _drop_empty(c)


def project_2d(x: np.ndarray, centroids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """PCA to 2-D of the points (and centroids, in the same basis)."""
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=0, keepdims=True)
    if len(x) < 2:
        basis = np.eye(x.shape[1])[:, :2]
    else:
        _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
        basis = vt[:2].T
        if basis.shape[1] < 2:
            basis = np.pad(basis, ((0, 0), (0, 2 - basis.shape[1])))
    pts = (x - mean) @ basis
    cen = (
        (np.asarray(centroids, dtype=np.float64) - mean) @ basis if centroids is not None else None
    )
    return pts, cen


def plot_clusters(
    x: np.ndarray,
    labels: np.ndarray,
    centroids: np.ndarray,
    path: str | Path,
    kinds: list[str] | None = None,
    title: str = "",
) -> Path:
    """Scatter of the 2-D projection, one colour per cluster, marker per example kind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts, cen = project_2d(x, centroids)
    markers = {"p2t": "o", "t2c": "s", "p2c": "^"}
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    cmap = plt.get_cmap("tab10")
    kinds = kinds or ["example"] * len(pts)
    for c in range(len(centroids)):
        for kind in sorted(set(kinds)):
            sel = (labels == c) & (np.asarray(kinds) == kind)
            if sel.any():
                ax.scatter(
                    pts[sel, 0],
                    pts[sel, 1],
                    s=22,
                    color=cmap(c % 10),
                    marker=markers.get(kind, "o"),
                    alpha=0.75,
                    label=f"cluster {c} · {kind}",
                )
        ax.scatter(cen[c, 0], cen[c, 1], s=180, color=cmap(c % 10), marker="X", edgecolor="black")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title(title or f"{len(pts)} training examples, k={len(centroids)} (X: centroids)")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
