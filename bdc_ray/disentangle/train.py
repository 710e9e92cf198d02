"""Training one LoRA expert (docs/method.md#disentangle-disenlora): peft LoRA on the base model, loss on response
tokens only, the shared chat template, DeepSpeed for the optimiser step (ZeRO stage by config).

`ExpertTraining` is the loop itself and needs no Ray: Ray Train runs it through
`train_loop_per_worker` (one call per worker, the process group already set up by TorchTrainer);
`train_single_process` is the plain peft + torch loop the benchmark compares against.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ExpertsConfig
from ..llm import precision
from ..llm.models import resolve_model

log = logging.getLogger(__name__)

IGNORE = -100  # label of tokens that carry no loss (prompt and padding)


@dataclass(frozen=True)
class ExpertSpec:
    """Everything one expert's training needs; it travels in Ray Train's loop config."""

    name: str
    model_path: str
    examples: list[dict[str, Any]]  # rows with `messages` and `response`
    out_dir: str
    experts: ExpertsConfig
    seed: int = 0
    fingerprint: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    # run storage (a URI) and the adapter's folder in it: rank 0 uploads the adapter there from
    # whichever node it trains on; without one it is written to out_dir
    storage: str = ""
    out_name: str = ""

    def __post_init__(self) -> None:
        # on construction and again on arrival (`arrived`): a dict, or a config pickled by
        # another process, becomes a checked ExpertsConfig
        object.__setattr__(self, "experts", ExpertsConfig.model_validate(self.experts))

    def arrived(self) -> ExpertSpec:
        return dataclasses.replace(self)


# ---------------------------------------------------------------- data


def tokenize_example(
    tokenizer: Any, messages: list[dict[str, str]], response: str, max_len: int
) -> dict[str, list[int]] | None:
    """Input ids and labels of one example, rendered with the model's chat template exactly as
    inference renders the prompt; labels are IGNORE on the prompt. The response ends with the
    template's end-of-turn so the model learns to stop. None when truncation leaves no response
    token."""
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(
        [*messages, {"role": "assistant", "content": response}], tokenize=False
    )
    if not full.startswith(prompt):  # a template that rewrites earlier turns: fall back
        full = prompt + response + (tokenizer.eos_token or "")
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    if ids[: len(p_ids)] != p_ids:  # tokens merged across the boundary: tokenise apart
        r_ids = tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"]
        ids = p_ids + r_ids
    # drop the template's trailing newline after the end-of-turn token: nothing to learn there
    while len(ids) > len(p_ids) + 1 and tokenizer.decode(ids[-1:]).strip() == "":
        ids = ids[:-1]
    ids = ids[:max_len]
    labels = [IGNORE] * min(len(p_ids), len(ids)) + ids[len(p_ids) :]
    if all(label == IGNORE for label in labels):
        return None
    return {"input_ids": ids, "labels": labels}


def tokenize_examples(
    tokenizer: Any, examples: list[dict[str, Any]], max_len: int
) -> list[dict[str, list[int]]]:
    out = []
    for ex in examples:
        row = tokenize_example(tokenizer, ex["messages"], ex["response"], max_len)
        if row is None:
            log.warning(
                "example %s: its prompt fills experts.max_seq_len=%d, skipped",
                ex.get("id"),
                max_len,
            )
        else:
            out.append(row)
    if not out:
        raise ValueError(
            f"no example has a response token within experts.max_seq_len={max_len}; raise it"
        )
    return out


def collate(rows: list[dict[str, list[int]]], pad_id: int) -> dict[str, Any]:
    """Right-padded tensors; padding carries no loss and no attention."""
    import torch

    n = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), n), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), n), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), n), dtype=torch.long)
    for i, r in enumerate(rows):
        m = len(r["input_ids"])
        ids[i, :m] = torch.tensor(r["input_ids"])
        labels[i, :m] = torch.tensor(r["labels"])
        mask[i, :m] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def steps_per_epoch(n: int, batch_size: int, world: int) -> int:
    return max(1, math.ceil(n / (batch_size * world)))


def epoch_batches(
    n: int, batch_size: int, rank: int, world: int, seed: int, epoch: int
) -> list[list[int]]:
    """This rank's batches for one epoch: a seeded permutation cut into global batches of
    batch_size * world, each rank taking its slice. The permutation is cycled so every rank has
    as many steps as the others (a collective step must not wait for a rank with no data)."""
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    steps = steps_per_epoch(n, batch_size, world)
    need = steps * batch_size * world
    order = (order * math.ceil(need / n))[:need]
    out = []
    for s in range(steps):
        glob = order[s * batch_size * world : (s + 1) * batch_size * world]
        out.append(glob[rank * batch_size : (rank + 1) * batch_size])
    return out


# ---------------------------------------------------------------- model


def lora_config(experts: ExpertsConfig):
    from peft import LoraConfig

    return LoraConfig(
        r=experts.r,
        lora_alpha=experts.alpha,
        lora_dropout=experts.dropout,
        target_modules=list(experts.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )


def train_device(experts: ExpertsConfig) -> str:
    import torch

    return "cuda" if experts.use_gpu and torch.cuda.is_available() else "cpu"


def build_lora_model(model_path: str, experts: ExpertsConfig, seed: int = 0):
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)  # LoRA A's init: the same expert from the same seed
    dtype = precision.resolve(experts.dtype, train_device(experts))
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
    model.config.use_cache = False
    return get_peft_model(model, lora_config(experts))


def deepspeed_config(experts: ExpertsConfig, world: int) -> dict[str, Any]:
    """A standard DeepSpeed JSON config. The optimiser (torch AdamW) and the linear schedule
    are handed to `deepspeed.initialize` as client objects: DeepSpeed's own Adam builds a C++/CUDA
    op, which costs minutes on a CPU-only machine and buys nothing for a LoRA's few parameters."""
    cfg: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": experts.batch_size,
        "gradient_accumulation_steps": 1,
        "train_batch_size": experts.batch_size * world,
        "zero_optimization": {"stage": experts.zero_stage},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }
    if experts.grad_clip:
        cfg["gradient_clipping"] = experts.grad_clip
    if precision.resolve_name(experts.dtype, train_device(experts)) == "bfloat16":
        cfg["bf16"] = {"enabled": True}
    return cfg


def prepare_torch_extensions(stale_after_s: float = 900.0) -> Path:
    """DeepSpeed JIT-builds a small communication op on first use. Build it in the project cache,
    and remove a build lock left by a killed process (it would make every later run hang)."""
    from ..llm.models import cache_dir

    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or cache_dir() / "torch_extensions")
    root.mkdir(parents=True, exist_ok=True)
    os.environ["TORCH_EXTENSIONS_DIR"] = str(root)
    now = time.time()
    for lock in root.glob("**/lock"):
        try:
            if now - lock.stat().st_mtime > stale_after_s:
                log.warning("removing a stale DeepSpeed build lock %s", lock)
                lock.unlink()
        except FileNotFoundError:
            pass
    return root


def init_process_group() -> None:
    """Ray Train has set up the process group (gloo on CPU, nccl on GPU); outside it (the
    benchmark, a single process) start a one-process group so DeepSpeed runs the same code."""
    import deepspeed
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    for key, value in (
        ("MASTER_ADDR", "127.0.0.1"),
        ("RANK", "0"),
        ("WORLD_SIZE", "1"),
        ("LOCAL_RANK", "0"),
    ):
        os.environ.setdefault(key, value)
    if "MASTER_PORT" not in os.environ:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)


def linear_schedule(optimizer: Any, total_steps: int, warmup_ratio: float):
    from transformers import get_linear_schedule_with_warmup

    return get_linear_schedule_with_warmup(
        optimizer, int(round(warmup_ratio * total_steps)), max(total_steps, 1)
    )


def _optimizer(model: Any, experts: ExpertsConfig):
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=experts.lr, weight_decay=experts.weight_decay)


# ---------------------------------------------------------------- the loop


class ExpertTraining:
    """One expert's training on one worker of `world` (rank 0 writes the adapter and the log).

    `checkpoint(step, metrics, save)` is called every `checkpoint_every` steps and at the end;
    `save(dir)` writes this worker's part of a resumable checkpoint into `dir`."""

    def __init__(self, spec: ExpertSpec, rank: int = 0, world: int = 1) -> None:
        self.spec, self.rank, self.world = spec, rank, world
        self.e = spec.experts

    def run(
        self,
        resume_dir: str | None = None,
        checkpoint: Callable[[int, dict[str, Any], Callable[[str], None]], None] | None = None,
    ) -> dict[str, Any]:
        engine, rows, pad_id, total = self._setup()
        state = self._resume(engine, resume_dir, total)
        start_step = state["step"]

        def save(path: str) -> None:
            engine.save_checkpoint(path, tag="state", client_state=dict(state),
                                   exclude_frozen_parameters=True)  # fmt: skip

        self.started_at = time.time()
        t_start = time.perf_counter()
        self._steps(engine, rows, pad_id, total, state, save, checkpoint)
        wall = time.perf_counter() - t_start
        self.model = engine.module  # the trained peft model (tests compare it with the saved one)
        ran = state["step"] - start_step
        return self._finish(engine, state["history"], total, wall, state["resumed_from"], ran)

    def _setup(self) -> tuple[Any, list[dict], int, int]:
        """Tokenised examples, the LoRA model and its DeepSpeed engine; the number of steps."""
        import deepspeed
        from transformers import AutoTokenizer

        spec, e = self.spec, self.e
        model_path = str(resolve_model(spec.model_path))  # resolved on this worker's node
        tok = AutoTokenizer.from_pretrained(model_path)
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        rows = tokenize_examples(tok, spec.examples, e.max_seq_len)
        self.used = len(rows)
        self.per_epoch = steps_per_epoch(len(rows), e.batch_size, self.world)
        total = self.per_epoch * e.epochs
        model = build_lora_model(model_path, e, spec.seed)
        optimizer = _optimizer(model, e)
        self.scheduler = linear_schedule(optimizer, total, e.warmup_ratio)
        init_process_group()
        engine, _, _, _ = deepspeed.initialize(
            model=model,
            optimizer=optimizer,
            lr_scheduler=self.scheduler,
            config=deepspeed_config(e, self.world),
        )
        return engine, rows, pad_id, total

    def _resume(self, engine: Any, resume_dir: str | None, total: int) -> dict[str, Any]:
        """The step, history and resume record to continue from (a fresh start without a
        checkpoint); the engine's weights and optimiser are restored in place."""
        state: dict[str, Any] = {
            "step": 0,
            "history": {"loss": [], "lr": [], "tokens": [], "step_s": []},
            "resumed_from": [],
        }
        if resume_dir:
            _, client = engine.load_checkpoint(
                resume_dir, load_module_strict=False, load_optimizer_states=True
            )
            if client:
                step = int(client["step"])
                state = {"step": step, "history": client["history"],
                         "resumed_from": [*client.get("resumed_from", []), step]}  # fmt: skip
                log.info("expert %s: resumed at step %d of %d", self.spec.name, step, total)
        return state

    def _steps(self, engine, rows, pad_id, total, state, save, checkpoint) -> None:
        """The remaining steps from `state["step"]`, updating `state` as they go."""
        import torch
        import torch.distributed as dist

        e, history, per_epoch = self.e, state["history"], self.per_epoch
        engine.train()
        for epoch in range(state["step"] // per_epoch, e.epochs):
            batches = epoch_batches(len(rows), e.batch_size, self.rank, self.world,
                                    self.spec.seed, epoch)  # fmt: skip
            for i in range(state["step"] - epoch * per_epoch, per_epoch):
                t0 = time.perf_counter()
                batch = collate([rows[j] for j in batches[i]], pad_id)
                batch = {k: v.to(engine.device) for k, v in batch.items()}
                out = engine(**batch)
                engine.backward(out.loss)
                engine.step()
                stats = torch.tensor(
                    [out.loss.detach().float().item(), float(batch["attention_mask"].sum())],
                    dtype=torch.float64,
                )
                if self.world > 1:  # mean loss, total tokens over workers
                    dist.all_reduce(stats)
                    stats[0] /= self.world
                state["step"] += 1
                history["loss"].append(round(float(stats[0]), 5))
                history["tokens"].append(int(stats[1]))
                history["lr"].append(self.scheduler.get_last_lr()[0])
                history["step_s"].append(round(time.perf_counter() - t0, 4))
                step = state["step"]
                if checkpoint and (step % e.checkpoint_every == 0 or step == total):
                    checkpoint(step, {"step": step, "loss": history["loss"][-1]}, save)

    def _finish(
        self, engine: Any, history: dict, total: int, wall: float, resumed: list, ran: int
    ) -> dict:
        import deepspeed

        spec = self.spec
        trainable = [p for p in engine.module.parameters() if p.requires_grad]
        # ZeRO-3 partitions parameters: gather the adapter's before saving it
        gather = (
            deepspeed.zero.GatheredParameters(trainable)
            if self.e.zero_stage == 3
            else contextlib.nullcontext()
        )
        # throughput of the steps this attempt ran (a resumed run restores earlier steps' log);
        # over step time, so start-up and checkpoint writing are not counted (wall_s has them)
        tokens_here = sum(history["tokens"][len(history["tokens"]) - ran :]) if ran else 0
        step_s = sum(history["step_s"][len(history["step_s"]) - ran :]) if ran else 0.0
        result = _log_row(
            spec, history, total, self.used, self.world, tokens_here, step_s, wall, resumed,
            self.e.zero_stage, loop_started_at=self.started_at, loop_finished_at=time.time(),
        )  # fmt: skip
        with gather:
            if self.rank == 0:
                deliver_adapter(engine.module, spec, result)
        return result


def deliver_adapter(model: Any, spec: ExpertSpec, log_row: dict[str, Any]) -> None:
    """The adapter where the driver and later stages find it: uploaded into run storage (its
    train_log.json last, so a folder without it is not a trained expert) or written to out_dir."""
    from ..storage import RunStorage

    if not spec.storage:
        write_adapter(model, spec.out_dir, log_row)
        return
    with tempfile.TemporaryDirectory() as d:
        out = write_adapter(model, Path(d) / "adapter", log_row)
        RunStorage(spec.storage).put_dir(spec.out_name, out, last="train_log.json")


def write_adapter(model: Any, out_dir: str | Path, log_row: dict[str, Any]) -> Path:
    """peft format (adapter_config.json + adapter_model.safetensors), the training log and its
    loss curve; written into a temporary folder and renamed, so a half-written expert never
    looks finished."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the adapter is an ordinary output folder
    model.save_pretrained(tmp)
    (tmp / "train_log.json").write_text(json.dumps(log_row, indent=1))
    plot_loss(log_row, tmp / "loss.png")
    if out.exists():
        import shutil

        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def plot_loss(log_row: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loss = log_row["history"]["loss"]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(range(1, len(loss) + 1), loss, marker="o" if len(loss) < 30 else None, ms=3)
    ax.set_xlabel("step")
    ax.set_ylabel("train loss (response tokens)")
    ax.set_title(
        f"{log_row['name']}: {log_row['examples']} examples, {log_row['tokens_per_s']} tok/s"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------- Ray Train


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """TorchTrainer's loop: resumes from Ray Train's latest checkpoint (after a worker failure or
    a rerun of the same trainer name) and reports a checkpoint every `checkpoint_every` steps."""
    import ray.train
    import torch

    prepare_torch_extensions()
    spec: ExpertSpec = config["spec"].arrived()
    if config.get("num_threads"):
        torch.set_num_threads(int(config["num_threads"]))
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()

    def report(step: int, metrics: dict[str, Any], save: Callable[[str], None]) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            save(tmp)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        ExpertTraining(spec, rank, world).run(checkpoint=report)
        return
    with ckpt.as_directory() as path:
        ExpertTraining(spec, rank, world).run(resume_dir=path, checkpoint=report)


# ---------------------------------------------------------------- plain baseline


def train_single_process(
    spec: ExpertSpec, write: bool = True, max_steps: int | None = None
) -> dict[str, Any]:
    """The same training (data, order, model, optimiser, schedule) as a plain peft + torch loop in
    this process: the reference the benchmark measures Ray Train + DeepSpeed against."""
    import torch
    from transformers import AutoTokenizer

    e = spec.experts
    model_path = str(resolve_model(spec.model_path))
    tok = AutoTokenizer.from_pretrained(model_path)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    rows = tokenize_examples(tok, spec.examples, e.max_seq_len)
    per_epoch = steps_per_epoch(len(rows), e.batch_size, 1)
    total = per_epoch * e.epochs
    model = build_lora_model(model_path, e, spec.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    optimizer = _optimizer(model, e)
    scheduler = linear_schedule(optimizer, total, e.warmup_ratio)
    model.train()
    history: dict[str, Any] = {"loss": [], "lr": [], "tokens": [], "step_s": []}
    t_start = time.perf_counter()
    done = 0
    for epoch in range(e.epochs):
        for idx in epoch_batches(len(rows), e.batch_size, 0, 1, spec.seed, epoch):
            if max_steps is not None and done >= max_steps:
                break
            t0 = time.perf_counter()
            batch = {k: v.to(device) for k, v in collate([rows[j] for j in idx], pad_id).items()}
            out = model(**batch)
            out.loss.backward()
            if e.grad_clip:
                torch.nn.utils.clip_grad_norm_(
                    [p for p in model.parameters() if p.requires_grad], e.grad_clip
                )
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            done += 1
            history["loss"].append(round(out.loss.item(), 5))
            history["tokens"].append(int(batch["attention_mask"].sum()))
            history["lr"].append(scheduler.get_last_lr()[0])
            history["step_s"].append(round(time.perf_counter() - t0, 4))
    wall = time.perf_counter() - t_start
    tokens, step_s = sum(history["tokens"]), sum(history["step_s"])
    result = _log_row(spec, history, done, len(rows), 1, tokens, step_s, wall, [], None)
    if write:
        deliver_adapter(model, spec, result)
    return result


def _log_row(
    spec: ExpertSpec,
    history: dict[str, Any],
    steps: int,
    used: int,
    world: int,
    tokens_here: int,
    step_s: float,
    wall: float,
    resumed: list[int],
    zero_stage: int | None,
    **extra: Any,
) -> dict[str, Any]:
    """train_log.json of one expert, the same for both loops. tokens_per_s covers the steps this
    attempt ran, over step time (start-up and checkpoint writing are in wall_s)."""
    now = time.time()
    return {
        "name": spec.name,
        "steps": steps,
        "examples": len(spec.examples),
        "used_examples": used,  # the rest had no response token within max_seq_len
        "world_size": world,
        "final_loss": history["loss"][-1] if history["loss"] else None,
        "first_loss": history["loss"][0] if history["loss"] else None,
        "tokens": sum(history["tokens"]),
        "tokens_per_s": round(tokens_here / step_s, 2) if step_s > 0 else None,
        "step_s": round(step_s, 2),
        "wall_s": round(wall, 2),
        # this attempt's span in wall-clock time: shows which experts trained side by side
        "started_at": round(now - wall, 3),
        "finished_at": round(now, 3),
        "resumed_from": resumed,
        "fingerprint": spec.fingerprint,
        "zero_stage": zero_stage,
        **extra,
        "history": history,
        **spec.meta,
    }
