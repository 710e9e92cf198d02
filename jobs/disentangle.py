"""Disentangle, first half: embed the training examples with Ray Data and cluster them with faiss.

    python jobs/disentangle.py --config configs/local.yaml --run-dir runs/demo

Reads RUN_DIR/sft/{p2t,t2c,p2c}.jsonl (the Boost stage's output; `cluster.kinds` picks which),
embeds each example's full text on a pool of Ray Data actors (the encoder loads once per actor),
clusters with faiss spherical k-means (fixed `cluster.k`, or `auto`: elbow of SSE over
k_min..k_max, silhouette reported) and writes RUN_DIR/clusters/ and RUN_DIR/plots/clusters.png.
Skipped when its outputs exist for the same examples and config.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time

import _common  # noqa: F401  (puts the project on sys.path)
import numpy as np
from _common import init_ray, load, log, parser, run_main

from bdc_ray.config import Config
from bdc_ray.rundir import RunDir, atomic_write_text, write_jsonl


def training_examples(cfg: Config, run: RunDir) -> list[dict]:
    from bdc_ray.data import load_problems, make_split
    from bdc_ray.disentangle.examples import load_examples

    reference = []
    if cfg.cluster.reference_solutions:
        problems = {p.id: p for p in load_problems(cfg.data)}
        split = make_split(list(problems.values()), cfg.data, run.root)
        reference = [problems[i] for i in split.train]  # never a test problem
    return load_examples(run.root / "sft", cfg.cluster.kinds, reference)


def embed_with_ray_data(texts: list[str], cfg: Config) -> np.ndarray:
    """Embeddings of `texts` in input order, computed by Ray Data on an actor pool."""
    import numpy as np
    import ray

    from bdc_ray.disentangle.embed import EmbedBatch

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
    )
    out = np.zeros((len(texts), 0), dtype=np.float32)
    rows = ds.select_columns(["row", "embedding"]).take_all()
    if rows:
        out = np.zeros((len(texts), len(rows[0]["embedding"])), dtype=np.float32)
        for r in rows:
            out[int(r["row"])] = r["embedding"]
    return out


def disentangle(cfg: Config, run: RunDir, force: bool = False) -> dict:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bdc_ray.disentangle.cluster import cluster_embeddings, plot_clusters
    from bdc_ray.disentangle.examples import example_text

    out_dir = run.root / "clusters"
    examples = training_examples(cfg, run)
    h = hashlib.sha256(cfg.fingerprint("cluster", "seed").encode())
    for ex in examples:
        h.update(json.dumps([ex["id"], ex["messages"], ex["response"]]).encode())
    fingerprint = h.hexdigest()[:16]
    meta_path = out_dir / "meta.json"
    if not force and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("fingerprint") == fingerprint:
            log.info("disentangle: clusters exist for these examples and config, skipped")
            return meta
    start = time.perf_counter()
    log.info("disentangle: embedding %d examples with %s", len(examples), cfg.cluster.encoder)
    emb = embed_with_ray_data([example_text(ex) for ex in examples], cfg)
    embed_s = time.perf_counter() - start
    c = cfg.cluster
    res = cluster_embeddings(emb, c.k, c.k_min, c.k_max, c.seed, c.niter, c.nredo)
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
    plot_clusters(
        emb,
        res.labels,
        res.centroids,
        run.root / "plots" / "clusters.png",
        kinds=[ex.get("kind", "") for ex in examples],
    )
    if len(res.sweep) > 1:
        _plot_sweep(res.sweep, run.root / "plots" / "k_sweep.png")
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
    log.info(
        "disentangle: k=%d (%s), sizes %s, silhouette %s",
        res.k,
        res.chosen_by,
        sizes,
        res.silhouette,
    )
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


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__.splitlines()[1])
    p.add_argument("--force", action="store_true", help="recluster even if outputs exist")
    args = p.parse_args(argv)
    cfg = load(args)
    run = RunDir(args.run_dir)
    training_examples(cfg, run)  # a malformed example file fails here, before Ray starts
    init_ray(cfg)
    meta = disentangle(cfg, run, force=args.force)
    print(json.dumps({k: v for k, v in meta.items() if k != "fingerprint"}))
    return meta


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
