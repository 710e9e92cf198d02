"""Stage `hypernet` (Customize): search the hypernetwork's settings with Ray Tune (ASHA on
validation loss) and keep the best trial's hypernetwork.

Reads clusters/ (examples, centroids) and the cluster experts in experts/. Each trial freezes
the base model and the experts (a gated mixture of them), trains only the hypernetwork on the
examples' response tokens, and reports validation loss per epoch with a checkpoint. Searched:
hidden size, lr, tau, weight decay, adapted layers (all / first third / last third). Writes
hypernet/ (hypernet.pt, hypernet.json, tune_results.csv) and plots/tune.png. Skipped when the
hypernetwork exists for the same experts and config.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

from ..config import Config
from ..customize.tune import TrialData
from ..rundir import RunDir, atomic_write_text, read_jsonl
from .stages import StageInputError, stage

log = logging.getLogger(__name__)


def cluster_experts(run: RunDir) -> dict[str, Path]:
    root = run.root / "experts"
    found = [p for p in root.glob("cluster_*") if (p / "adapter_config.json").is_file()]
    if not found:
        raise StageInputError(f"no cluster experts in {root}: run jobs/train_experts.py first")
    return {p.name: p for p in sorted(found, key=lambda p: int(p.name.rsplit("_", 1)[1]))}


def fingerprint(cfg: Config, experts: dict[str, Path]) -> str:
    h = hashlib.sha256(stage("hypernet").fingerprint(cfg).encode())
    for name, p in experts.items():
        h.update(name.encode())
        h.update(hashlib.sha256((p / "adapter_model.safetensors").read_bytes()).digest())
    return h.hexdigest()[:16]


def prepare(cfg: Config, run: RunDir, experts: dict[str, Path]) -> TrialData:
    """What every trial shares: examples, their hypernetwork features, groups, paths."""
    import numpy as np

    from ..customize.hypernet import features
    from ..disentangle.embed import embed_texts, load_encoder
    from ..disentangle.examples import prompt_text

    examples = read_jsonl(run.root / "clusters" / "examples.jsonl")
    centroids = np.load(run.root / "clusters" / "centroids.npy")
    if len(centroids) != len(experts):
        raise StageInputError(
            f"{len(centroids)} centroids but {len(experts)} cluster experts; rerun "
            "jobs/train_experts.py"
        )
    emb = embed_texts(load_encoder(cfg.cluster.encoder), [prompt_text(e) for e in examples])
    spec = cfg.models[cfg.base_model].path
    return TrialData(
        examples=examples,
        features=features(emb, centroids).numpy(),
        groups=[e.get("problem_id") or e["id"] for e in examples],
        experts={k: str(v.resolve()) for k, v in experts.items()},
        base_model_spec=spec,
        encoder=cfg.cluster.encoder,
        settings=cfg.hypernet,
        seed=cfg.seed,
        storage=run.storage.spec if run.storage.remote else "",
    )


def search_space(cfg: Config) -> dict:
    from ray import tune

    t, h = cfg.hypernet.tune, cfg.hypernet
    if not t.enabled:
        return {
            "hidden": h.hidden,
            "lr": h.lr,
            "tau": h.tau,
            "weight_decay": h.weight_decay,
            "layers": h.layers,
        }
    return {
        "hidden": tune.choice(t.hidden),
        "lr": tune.loguniform(*t.lr),
        "tau": tune.uniform(*t.tau),
        "weight_decay": tune.uniform(*t.weight_decay),
        "layers": tune.choice(t.layers),
    }


def make_tuner(cfg: Config, data: TrialData, fp: str, storage: tuple):
    """ASHA over `search_space`, one checkpoint kept per trial, under hypernet/.tune in run
    storage (`storage`: `RunStorage.ray_storage`'s path and filesystem)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from ..customize.tune import trial

    t = cfg.hypernet.tune
    return tune.Tuner(
        tune.with_resources(
            tune.with_parameters(trial, data=data),
            {"cpu": t.cpus_per_trial, "gpu": t.gpus_per_trial, **t.resources_per_trial},
        ),
        param_space=search_space(cfg),
        tune_config=tune.TuneConfig(
            metric="val_loss",
            mode="min",
            scheduler=ASHAScheduler(
                max_t=cfg.hypernet.epochs, grace_period=1, reduction_factor=2, time_attr="epoch"
            ),
            # the sampled settings follow the run's seed: a rerun (on any cluster) tries the same;
            # the generator itself caps trials at once (Tune ignores max_concurrent_trials then)
            search_alg=BasicVariantGenerator(
                random_state=cfg.seed, max_concurrent=t.max_concurrent
            ),
            num_samples=t.num_samples if t.enabled else 1,
        ),
        run_config=tune.RunConfig(
            name=f"hypernet-{fp}",
            storage_path=storage[0],
            storage_filesystem=storage[1],
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute="val_loss", checkpoint_score_order="min"
            ),
            verbose=0,
        ),
    )


def _stage_best(results, best, fp: str, tmp: Path) -> None:
    """The best checkpoint (hypernet.pt, hypernet.json with the fingerprint) and the trials'
    table into `tmp`."""
    ckpt = best.get_best_checkpoint(metric="val_loss", mode="min")
    with ckpt.as_directory() as d:
        shutil.copytree(d, tmp, dirs_exist_ok=True)
    best_meta = json.loads((tmp / "hypernet.json").read_text())
    best_meta.update({"fingerprint": fp, "tune_config": best.config})
    (tmp / "hypernet.json").write_text(json.dumps(best_meta, indent=1))
    table = results.get_dataframe(filter_metric="val_loss", filter_mode="min")
    wanted = ("val_loss", "best_val_loss", "epoch", "trial_id")
    keep = [c for c in table.columns if c.startswith("config/") or c in wanted]
    table[keep].sort_values("val_loss").to_csv(tmp / "tune_results.csv", index=False)


def _replace_outputs(out: Path, tmp: Path) -> None:
    """hypernet/ takes `tmp`'s files; Tune's own folder (.tune) stays."""
    if out.exists():
        for child in out.iterdir():
            if child.name != ".tune":
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    out.mkdir(parents=True, exist_ok=True)
    for child in tmp.iterdir():
        shutil.move(str(child), out / child.name)
    shutil.rmtree(tmp, ignore_errors=True)


def tune_hypernet(cfg: Config, run: RunDir) -> dict:
    """Search, keep the best hypernetwork; returns hypernet/summary.json's content."""
    experts = cluster_experts(run)
    fp = fingerprint(cfg, experts)
    out = run.root / "hypernet"
    meta_path = out / "hypernet.json"
    if meta_path.is_file() and json.loads(meta_path.read_text()).get("fingerprint") == fp:
        log.info("hypernet: trained for these experts and config, skipped")
        return json.loads((out / "summary.json").read_text())
    start = time.perf_counter()
    results = make_tuner(
        cfg, prepare(cfg, run, experts), fp, run.storage.ray_storage("hypernet/.tune")
    ).fit()
    errors = [str(r.error) for r in results if r.error]
    if not [r for r in results if r.error is None and r.checkpoint is not None]:
        raise RuntimeError(f"every hypernetwork trial failed: {errors[:2]}")
    best = results.get_best_result(metric="val_loss", mode="min", scope="all")
    tmp = Path(tempfile.mkdtemp(prefix=".hypernet.", dir=run.root))
    _stage_best(results, best, fp, tmp)
    curves = {
        r.path: (r.config, r.metrics_dataframe) for r in results if r.metrics_dataframe is not None
    }
    _plot_curves(curves, run.root / "plots" / "tune.png")
    best_val = float(best.metrics["best_val_loss"])
    summary = {
        "best_config": best.config,
        "best_val_loss": best_val,
        "mean_experts_val_loss": _start_val(results),
        "trials": len(results),
        "failed_trials": len(errors),
        "wall_s": round(time.perf_counter() - start, 1),
    }
    (tmp / "summary.json").write_text(json.dumps(summary, indent=1))
    _replace_outputs(out, tmp)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1))
    log.info("hypernet: best %s, val loss %.4f", best.config, best_val)
    return summary


def _start_val(results) -> float | None:
    """Validation loss at epoch 0 (uniform gates: the experts' mean), from any trial."""
    for r in results:
        df = r.metrics_dataframe
        if df is not None and "start_val_loss" in df:
            return float(df["start_val_loss"].iloc[0])
    return None


def _plot_curves(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for config, df in curves.values():
        if "val_loss" not in df:
            continue
        label = (
            f"h{config['hidden']} lr{config['lr']:.1e} tau{config['tau']:.2f} {config['layers']}"
        )
        ax.plot(df["epoch"], df["val_loss"], marker="o", ms=3, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation loss")
    ax.set_title("Ray Tune trials (ASHA)")
    ax.legend(fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
