"""Stage `experts` (Disentangle, second half): one LoRA expert per cluster plus `full`, trained
with Ray Train (TorchTrainer, DeepSpeed inside the loop), then the linear/TIES/DARE merges.

Reads clusters/ (the disentangle stage) and writes experts/<name>/ in peft format with
train_log.json and loss.png. Experts train concurrently, as many as the cluster's resources allow
(`experts.max_concurrent` trainers; Ray queues the rest); each checkpoints to
experts/.ray_train/ every `experts.checkpoint_every` steps, and a failed worker (or a rerun after
an interrupted job) resumes from its last checkpoint. An expert already trained on the same
examples and config is skipped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..config import Config
from ..rundir import RunDir, atomic_write_text, read_jsonl
from .stages import StageInputError, stage

log = logging.getLogger(__name__)


def expert_groups(run: RunDir, full: bool = True) -> dict[str, list[dict]]:
    """{'full': all examples, 'cluster_<i>': that cluster's examples}."""
    import pyarrow.parquet as pq

    clusters = run.root / "clusters"
    if not (clusters / "assignments.parquet").is_file():
        raise StageInputError(
            f"{clusters}/assignments.parquet is missing: run jobs/disentangle.py first"
        )
    examples = {ex["id"]: ex for ex in read_jsonl(clusters / "examples.jsonl")}
    rows = pq.read_table(clusters / "assignments.parquet", columns=["id", "cluster"]).to_pylist()
    groups: dict[str, list[dict]] = {"full": list(examples.values())} if full else {}
    for c in sorted({r["cluster"] for r in rows}):
        groups[f"cluster_{c}"] = [examples[r["id"]] for r in rows if r["cluster"] == c]
    return groups


def expert_fingerprint(cfg: Config, name: str, examples: list[dict]) -> str:
    h = hashlib.sha256(stage("experts").fingerprint(cfg).encode())
    h.update(name.encode())
    for ex in examples:
        h.update(json.dumps([ex["id"], ex["messages"], ex["response"]]).encode())
    return h.hexdigest()[:16]


def is_trained(out_dir: Path, fingerprint: str) -> bool:
    path = out_dir / "train_log.json"
    return (
        (out_dir / "adapter_model.safetensors").is_file()
        and path.is_file()
        and json.loads(path.read_text()).get("fingerprint") == fingerprint
    )


def make_trainer(cfg: Config, spec, storage: Path | tuple, run_name: str):
    """A TorchTrainer for one expert (its own checkpoints, failure policy and resources).
    `storage`: a folder, or (path, filesystem) from `RunStorage.ray_storage`, where the
    checkpoints go (in run storage, so that a trainer on any node resumes from them)."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from ..disentangle.train import train_loop_per_worker

    e = cfg.experts
    path, filesystem = (str(storage.resolve()), None) if isinstance(storage, Path) else storage
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"spec": spec, "num_threads": max(1, int(e.cpus_per_worker))},
        torch_config=TorchConfig(backend="nccl" if e.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=e.num_workers,
            use_gpu=e.use_gpu,
            resources_per_worker={
                "CPU": e.cpus_per_worker,
                **({"GPU": 1} if e.use_gpu else {}),
                **e.resources_per_worker,
            },
        ),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=path,
            storage_filesystem=filesystem,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
            failure_config=ray.train.FailureConfig(max_failures=e.max_failures),
        ),
    )


TRAIN_STORAGE = "experts/.ray_train"  # Ray Train's checkpoints, in run storage itself
SUMMARY_KEYS = ("examples", "steps", "first_loss", "final_loss", "tokens_per_s", "wall_s",
                "resumed_from")  # fmt: skip


def _plan(cfg: Config, run: RunDir, groups: dict) -> tuple[list, dict]:
    """(trainers to fit, train logs of the experts already trained on these examples)."""
    from ..disentangle.train import ExpertSpec

    storage = run.storage.ray_storage(TRAIN_STORAGE)
    todo, done = [], {}
    for name, examples in groups.items():
        fp = expert_fingerprint(cfg, name, examples)
        out = run.root / "experts" / name
        if is_trained(out, fp):
            log.info("expert %s: trained on these examples and config, skipped", name)
            done[name] = json.loads((out / "train_log.json").read_text())
            continue
        # the model as configured, not this node's path of it: each worker resolves it on its
        # own node; a run in a store gets the adapter uploaded there by the trainer
        spec = ExpertSpec(name=name, model_path=cfg.models[cfg.base_model].path,
                          examples=examples, out_dir=str(out.resolve()), experts=cfg.experts,
                          seed=cfg.seed, fingerprint=fp, out_name=f"experts/{name}",
                          storage=run.storage.spec if run.storage.remote else "")  # fmt: skip
        todo.append((name, make_trainer(cfg, spec, storage, f"{name}-{fp}"), f"{name}-{fp}"))
    return todo, done


def _fit_all(cfg: Config, run: RunDir, todo: list) -> dict:
    """Fit the trainers, `experts.max_concurrent` at once; returns their train logs."""
    log.info("training %d experts: %s", len(todo), ", ".join(t[0] for t in todo))

    def fit(item):
        name, trainer, run_name = item
        t0 = time.perf_counter()
        trainer.fit()  # raises TrainingFailedError after max_failures
        run.storage.pull()  # the adapter its rank 0 uploaded, wherever it trained
        # the adapter is written: its resumable checkpoints are no longer needed
        run.storage.delete_dir(f"{TRAIN_STORAGE}/{run_name}")
        return name, time.perf_counter() - t0

    logs = {}
    with ThreadPoolExecutor(max_workers=cfg.experts.max_concurrent) as pool:
        for name, secs in pool.map(fit, todo):
            r = json.loads((run.root / "experts" / name / "train_log.json").read_text())
            logs[name] = r
            log.info("expert %s: %d steps, loss %.3f -> %.3f, %.0f tok/s, %.0f s", name,
                     r["steps"], r["first_loss"], r["final_loss"], r["tokens_per_s"] or 0,
                     secs)  # fmt: skip
    return logs


def train_experts(cfg: Config, run: RunDir, names: list[str] | None = None) -> dict:
    """Train `full` and one expert per cluster (or only `names`), then merge; returns
    experts/summary.json's content."""
    from ..llm.models import resolve_model

    groups = expert_groups(run, cfg.experts.full)
    if names:
        unknown = sorted(set(names) - set(groups))
        if unknown:
            raise StageInputError(f"unknown experts {unknown}; known: {sorted(groups)}")
        groups = {n: groups[n] for n in names}
    base = resolve_model(cfg.models[cfg.base_model].path)
    todo, results = _plan(cfg, run, groups)
    start = time.perf_counter()
    if todo:
        results.update(_fit_all(cfg, run, todo))
    summary = {
        "experts": {n: {k: r.get(k) for k in SUMMARY_KEYS} for n, r in results.items()},
        "train_wall_s": round(time.perf_counter() - start, 1),
    }
    summary["merges"] = merge(cfg, run, base)
    path = run.root / "experts" / "summary.json"
    if todo or not path.is_file():  # a rerun that trained nothing leaves the record as it was
        atomic_write_text(path, json.dumps(summary, indent=1))
    return summary


def merge(cfg: Config, run: RunDir, base: Path) -> dict:
    """linear / TIES / DARE merges of the cluster experts; skipped when the recorded merge was
    made from the same expert files."""
    from ..disentangle.merge import merge_experts

    root = run.root / "experts"
    experts = {
        p.name: p for p in sorted(root.glob("cluster_*")) if (p / "adapter_config.json").is_file()
    }
    if not cfg.experts.merges:
        return {}
    if len(experts) < 2:
        log.warning("merges need at least 2 cluster experts, found %d: skipped", len(experts))
        return {}
    h = hashlib.sha256(f"{cfg.experts.merge_density}:{cfg.seed}".encode())
    for name, p in experts.items():
        h.update(name.encode())
        h.update(hashlib.sha256((p / "adapter_model.safetensors").read_bytes()).digest())
    fp = h.hexdigest()[:16]
    todo = []
    for kind in cfg.experts.merges:
        rec = root / f"merged_{kind}" / "merge.json"
        if not (rec.is_file() and json.loads(rec.read_text()).get("fingerprint") == fp):
            todo.append(kind)
    if todo:
        paths = merge_experts(base, experts, root, todo, cfg.experts.merge_density, cfg.seed)
        for p in paths.values():
            rec = json.loads((p / "merge.json").read_text())
            atomic_write_text(p / "merge.json", json.dumps({**rec, "fingerprint": fp}, indent=1))
        log.info("merged %s from %s", ", ".join(todo), ", ".join(experts))
    return {kind: str(root / f"merged_{kind}") for kind in cfg.experts.merges}
