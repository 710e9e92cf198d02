"""Stage `disentangle`, first half: embed the training examples with Ray Data and cluster them
with faiss.

Reads sft/{p2t,t2c,p2c}.jsonl (the explore stage's output; `cluster.kinds` picks which) and,
with `cluster.reference_solutions`, the train split's reference solutions; embeds each example's
full text on a pool of Ray Data actors (the encoder loads once per actor); clusters with faiss
spherical k-means (fixed `cluster.k`, or `auto`: elbow of SSE over k_min..k_max, silhouette
reported); writes clusters/ and plots/clusters.png. Skipped when its outputs exist for the same
examples and config.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time

import numpy as np

from ..config import Config
from ..rundir import RunDir, atomic_write_text, write_jsonl
from .stages import stage

log = logging.getLogger(__name__)


def training_examples(cfg: Config, run: RunDir) -> list[dict]:
    from ..data import load_problems, make_split
    from ..disentangle.examples import load_examples

    reference = []
    if cfg.cluster.reference_solutions:
        problems = {p.id: p for p in load_problems(cfg.data)}
        split = make_split(list(problems.values()), cfg.data, run.root)
        reference = [problems[i] for i in split.train]  # never a test problem
    return load_examples(run.root / "sft", cfg.cluster.kinds, reference)


def embed_with_ray_data(texts: list[str], cfg: Config) -> np.ndarray:
    """Embeddings of `texts` in input order, computed by Ray Data on an actor pool."""
    import ray

    from ..disentangle.embed import EmbedBatch

    c = cfg.cluster
    ds = ray.data.from_items([{"row": i, "text": t} for i, t in enumerate(texts)])
    ds = ds.map_batches(
        EmbedBatch,
        fn_constructor_kwargs={
            "encoder": c.encoder,
            "batch_size": c.embed_batch_size,
            "num_threads": max(1, int(c.embed_cpus)),
        },
        batch_size=c.embed_batch_size,
        compute=ray.data.ActorPoolStrategy(size=c.embed_workers),
        num_cpus=c.embed_cpus,
        num_gpus=c.embed_gpus,
        batch_format="numpy",
        **({"resources": dict(c.embed_resources)} if c.embed_resources else {}),
    )
    out = np.zeros((len(texts), 0), dtype=np.float32)
    rows = ds.select_columns(["row", "embedding"]).take_all()
    if rows:
        out = np.zeros((len(texts), len(rows[0]["embedding"])), dtype=np.float32)
        for r in rows:
            out[int(r["row"])] = r["embedding"]
    return out


def examples_fingerprint(cfg: Config, examples: list[dict]) -> str:
    h = hashlib.sha256(stage("disentangle").fingerprint(cfg).encode())
    for ex in examples:
        h.update(json.dumps([ex["id"], ex["messages"], ex["response"]]).encode())
    return h.hexdigest()[:16]


def _write_clusters(run: RunDir, examples: list[dict], emb: np.ndarray, res) -> None:
    """embeddings, centroids, assignments, the examples as clustered, the sweep and plots."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..disentangle.cluster import plot_clusters

    out_dir = run.root / "clusters"
    cos = (emb @ res.centroids.T)[np.arange(len(emb)), res.labels] if len(emb) else []
    out_dir.mkdir(parents=True, exist_ok=True)
    np.save(out_dir / "embeddings.npy", emb)
    np.save(out_dir / "centroids.npy", res.centroids)
    table = pa.table(
        {
            "id": [ex["id"] for ex in examples],
            "problem_id": [ex.get("problem_id") for ex in examples],
            "kind": [ex.get("kind") for ex in examples],
            "source": [ex.get("source", "search") for ex in examples],
            "cluster": res.labels.astype("int64"),
            "cosine": np.asarray(cos, dtype="float32"),
        }
    )
    pq.write_table(table, out_dir / "assignments.parquet")
    write_jsonl(out_dir / "examples.jsonl", examples)  # exactly what the experts train on
    atomic_write_text(out_dir / "sweep.json", json.dumps(res.sweep, indent=1))
    kinds = [ex.get("kind", "") for ex in examples]
    plot_clusters(emb, res.labels, res.centroids, run.root / "plots" / "clusters.png", kinds=kinds)
    if len(res.sweep) > 1:
        _plot_sweep(res.sweep, run.root / "plots" / "k_sweep.png")


def disentangle(cfg: Config, run: RunDir, force: bool = False) -> dict:
    """Embed and cluster the training examples; returns clusters/meta.json's content."""
    from ..disentangle.cluster import cluster_embeddings
    from ..disentangle.examples import example_text

    examples = training_examples(cfg, run)
    fingerprint = examples_fingerprint(cfg, examples)
    meta_path = run.root / "clusters" / "meta.json"
    if not force and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("fingerprint") == fingerprint:
            log.info("disentangle: clusters exist for these examples and config, skipped")
            return meta
    c = cfg.cluster
    start = time.perf_counter()
    log.info("disentangle: embedding %d examples with %s", len(examples), c.encoder)
    emb = embed_with_ray_data([example_text(ex) for ex in examples], cfg)
    embed_s = time.perf_counter() - start
    res = cluster_embeddings(emb, c.k, c.k_min, c.k_max, c.seed, c.niter, c.nredo)
    _write_clusters(run, examples, emb, res)
    sizes = np.bincount(res.labels, minlength=res.k).tolist()
    meta = {
        "k": res.k,
        "chosen_by": res.chosen_by,
        "sse": res.sse,
        "silhouette": res.silhouette,
        "sizes": sizes,
        "examples": len(examples),
        "by_source": {
            s: sum(ex.get("source") == s for ex in examples) for s in ("search", "reference")
        },
        "encoder": c.encoder,
        "dim": int(emb.shape[1]),
        "embed_s": round(embed_s, 1),
        "wall_s": round(time.perf_counter() - start, 1),
        "fingerprint": fingerprint,
    }
    atomic_write_text(meta_path, json.dumps(meta, indent=1))
    log.info("disentangle: k=%d (%s), sizes %s, silhouette %s",
             res.k, res.chosen_by, sizes, res.silhouette)  # fmt: skip
    return meta


def _plot_sweep(sweep: list[dict], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = [r["k"] for r in sweep]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(ks, [r["sse"] for r in sweep], marker="o", label="SSE")
    chosen = [r["k"] for r in sweep if r.get("chosen")]
    for k in chosen:
        ax.axvline(k, color="grey", ls="--", label=f"chosen k={k}")
    ax2 = ax.twinx()
    ax2.plot(
        ks,
        [r["silhouette"] if r["silhouette"] is not None else float("nan") for r in sweep],
        marker="s",
        color="tab:orange",
        label="silhouette",
    )
    ax.set_xlabel("k")
    ax.set_ylabel("SSE")
    ax2.set_ylabel("silhouette")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
