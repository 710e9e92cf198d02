"""Typed configuration of the whole pipeline.

One YAML file (``configs/local.yaml`` is the embedded default) plus dotted overrides from the
command line (``--set search.rollouts=8``, ``--set agents.0.temperature=0.5``). Every model
forbids unknown keys, so a typo fails loudly with the key's path and the keys that exist.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """A configuration a user wrote is wrong; the message names the key and the fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    source: Literal["humaneval", "jsonl"] = "humaneval"
    path: str | None = Field(None, description="JSONL file of problems when source is 'jsonl'")
    format: Literal["auto", "function", "stdio"] = "auto"
    strict: bool = Field(False, description="fail on any malformed row instead of skipping it")
    test_fraction: float = Field(0.5, gt=0.0, lt=1.0)
    split_seed: int = 0
    max_train: int | None = Field(None, ge=1, description="use only the first N train problems")
    max_test: int | None = Field(None, ge=1, description="use only the first N test problems")

    @model_validator(mode="after")
    def _path_for_jsonl(self) -> DataConfig:
        if self.source == "jsonl" and not self.path:
            raise ValueError("data.path is required when data.source is 'jsonl'")
        return self


class ModelConfig(_Strict):
    """One served model: agents and the System-1 solver refer to it by name."""

    path: str = Field(
        "smollm2-135m-instruct",
        description="'smollm2-135m-instruct' (embedded), 'tiny-random-llama' (tests), a local "
        "folder, or a hub id",
    )
    backend: Literal["transformers", "vllm", "openai"] = "transformers"
    replicas: int = Field(1, ge=1)
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    max_batch_size: int = Field(16, ge=1)
    batch_wait_ms: float = Field(5.0, ge=0, description="how long an actor waits to fill a batch")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    num_threads: int | None = Field(
        None, ge=1, description="torch threads of a CPU transformers backend (Ray gives 1 per CPU)"
    )
    max_restarts: int = Field(3, ge=-1)
    max_task_retries: int = Field(3, ge=-1)
    adapter: str | None = Field(
        None,
        description="peft LoRA adapter folder applied to the model (merged into the weights by "
        "the transformers backend, a LoRARequest on vLLM)",
    )
    # openai backend
    base_url: str | None = None
    api_key_env: str | None = Field(None, description="environment variable holding the API key")
    served_name: str | None = Field(None, description="model name sent to an OpenAI server")
    request_timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(2, ge=0)
    # backend-specific keyword arguments (e.g. vLLM's gpu_memory_utilization)
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _openai_needs_url(self) -> ModelConfig:
        if self.backend == "openai" and not self.base_url:
            raise ValueError("base_url is required when backend is 'openai'")
        if self.backend == "openai" and self.adapter:
            raise ValueError("adapter: the openai backend cannot apply an adapter; serve it")
        return self


class AgentConfig(_Strict):
    """An agent is a model plus its role prompt and sampling settings."""

    name: str
    model: str = Field("default", description="key into `models`")
    role_prompt: str = "You are an expert Python programmer."
    temperature: float = Field(0.8, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    max_tokens: int = Field(384, ge=1)


class SearchConfig(_Strict):
    width: int = Field(3, ge=1)
    trials: int = Field(2, ge=1)
    rollouts: int = Field(16, ge=1)
    max_depth: int = Field(6, ge=1)
    prune_margin: float = 0.0
    max_refines: int = Field(2, ge=0)
    early_stop: bool = True
    q_mode: Literal["max", "mean"] = "max"
    value_mode: Literal["mean", "max"] = "mean"
    gamma: float = Field(0.9, ge=0, le=1)
    c_base: float = Field(10.0, gt=0)
    c: float = 4.0
    concurrent_trees: int = Field(8, ge=1)
    train_limit: int | None = Field(
        None, ge=1, description="explore only the first N train problems"
    )
    test_limit: int | None = Field(
        None, ge=1, description="report mcts on the first N test problems"
    )


class ClusterConfig(_Strict):
    """Disentangle, first half: which examples, how they are embedded and clustered."""

    encoder: str = Field(
        "all-minilm-l6-v2",
        description="'all-minilm-l6-v2' (embedded), a local sentence-transformers/HF folder, or "
        "a hub id",
    )
    kinds: list[Literal["p2t", "t2c", "p2c"]] = Field(
        default_factory=lambda: ["p2t", "t2c", "p2c"], description="SFT files that are used"
    )
    reference_solutions: bool = Field(
        False,
        description="also train on the train split's reference solutions (p2c, source "
        "'reference'): for models too small to solve problems in search",
    )
    k: int | Literal["auto"] = Field(
        3, description="clusters, or 'auto': elbow of SSE over k_min..k_max"
    )
    k_min: int = Field(2, ge=2)
    k_max: int = Field(6, ge=2)
    niter: int = Field(50, ge=1, description="faiss k-means iterations")
    nredo: int = Field(5, ge=1, description="faiss k-means restarts; the lowest SSE is kept")
    seed: int = 0
    embed_batch_size: int = Field(64, ge=1)
    embed_workers: int = Field(1, ge=1, description="Ray Data actors embedding in parallel")
    embed_cpus: float = Field(1.0, gt=0, description="CPUs per embedding actor")
    embed_gpus: float = Field(0.0, ge=0, description="GPUs per embedding actor")

    @model_validator(mode="after")
    def _k_range(self) -> ClusterConfig:
        if isinstance(self.k, int) and self.k < 1:
            raise ValueError("k must be >= 1 or 'auto'")
        if self.k_max < self.k_min:
            raise ValueError(f"k_max ({self.k_max}) must be >= k_min ({self.k_min})")
        return self


class ExpertsConfig(_Strict):
    r: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"])
    lr: float = Field(1e-3, gt=0)
    epochs: int = Field(1, ge=1)
    batch_size: int = Field(4, ge=1)
    max_seq_len: int = Field(512, ge=16)
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="linear warm-up, then linear decay")
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, ge=0, description="0 turns clipping off")
    zero_stage: Literal[0, 1, 2, 3] = 2
    num_workers: int = Field(1, ge=1, description="Ray Train workers (data parallel) per expert")
    cpus_per_worker: float = Field(1.0, gt=0)
    use_gpu: bool = False
    dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="bfloat16 turns on DeepSpeed's bf16 mode (GPUs)"
    )
    max_concurrent: int = Field(
        4, ge=1, description="experts trained at once; Ray queues workers beyond the cluster"
    )
    checkpoint_every: int = Field(20, ge=1, description="steps between checkpoints")
    max_failures: int = Field(2, ge=-1, description="worker failures survived per expert")
    full: bool = Field(True, description="also train the `full` adapter on all examples")
    merges: list[Literal["linear", "ties", "dare"]] = Field(
        default_factory=lambda: ["linear", "ties", "dare"]
    )
    merge_density: float = Field(0.5, gt=0, le=1, description="kept fraction for TIES/DARE")


class TuneConfig(_Strict):
    """Ray Tune over the hypernetwork's settings (ASHA on validation loss)."""

    enabled: bool = Field(True, description="false: one trial with the `hypernet` values")
    num_samples: int = Field(8, ge=1)
    max_concurrent: int = Field(2, ge=1)
    cpus_per_trial: float = Field(1.0, gt=0)
    gpus_per_trial: float = Field(0.0, ge=0)
    hidden: list[int] = Field(default_factory=lambda: [32, 64, 128])
    lr: tuple[float, float] = (1e-4, 1e-2)
    tau: tuple[float, float] = (0.5, 2.0)
    weight_decay: tuple[float, float] = (0.0, 0.1)
    layers: list[Literal["all", "first_third", "last_third"]] = Field(
        default_factory=lambda: ["all", "first_third", "last_third"]
    )


class HypernetConfig(_Strict):
    hidden: int = Field(64, ge=1)
    tau: float = Field(1.0, gt=0)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    layers: Literal["all", "first_third", "last_third"] = "all"
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(4, ge=1)
    max_seq_len: int = Field(512, ge=16)
    val_fraction: float = Field(0.2, gt=0, lt=1)
    patience: int = Field(2, ge=1)
    tune: TuneConfig = Field(default_factory=TuneConfig)


class ServeConfig(_Strict):
    """The Ray Serve app of the customised solver (bdc_ray/serve, jobs/serve.py)."""

    host: str = Field("127.0.0.1", description="0.0.0.0 exposes the API beyond this machine")
    port: int = Field(8000, ge=1, le=65535)
    model_name: str = Field("bdc-customized", description="the model id clients ask for")
    api_key_env: str | None = Field(
        None, description="environment variable holding the bearer key; unset: no key"
    )
    max_batch_size: int = Field(16, ge=1, description="requests per gated-mixture batch")
    batch_wait_timeout_s: float = Field(0.05, ge=0, description="wait to fill a batch")
    batch_fill_wait_s: float = Field(
        0.25,
        ge=0,
        description="under load, how long a batch may wait to gather as many rows as were "
        "recently in flight together (0: no fill target; see bdc_ray/serve/window.py)",
    )
    max_ongoing_requests: int = Field(
        64, ge=1, description="per replica; keep it >= max_batch_size or batches stay small"
    )
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1, description="> min_replicas turns on autoscaling")
    target_ongoing_requests: float = Field(16.0, gt=0, description="autoscaling target")
    num_cpus: float = Field(1.0, ge=0, description="CPUs per replica")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per replica")
    num_threads: int | None = Field(None, ge=1, description="torch threads per replica")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_tokens_limit: int = Field(1024, ge=1, description="largest max_tokens a request may ask")
    max_n: int = Field(8, ge=1, description="largest n (choices per prompt) a request may ask")
    health_check_period_s: float = Field(10.0, gt=0)
    solve_timeout_s: float = Field(3.0, gt=0, description="/v1/solve: seconds per test")
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
    max_tokens: int = Field(300, ge=1)
    thought_tokens: int = Field(128, ge=1, description="budget of base_two_stage's thoughts")
    batch_size: int = Field(16, ge=1)
    timeout_s: float = Field(3.0, gt=0)
    workers: int = Field(4, ge=1, description="parallel test executions")
    executor_cpus: float | None = Field(
        None, ge=0, description="CPUs the ExecutorPool reserves in Ray (default: workers)"
    )
    concurrent_methods: int = Field(
        1,
        ge=1,
        description="methods evaluated at once, each model with num_threads / this many "
        "threads (on CPUs, two 1-thread generators outrun one 2-thread one)",
    )


class ResourcesConfig(_Strict):
    address: str | None = Field(None, description="Ray address; unset: RAY_ADDRESS or a local Ray")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a Ray started by the job")
    num_gpus: int | None = Field(None, ge=0)
    include_dashboard: bool = True


class Config(_Strict):
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    models: dict[str, ModelConfig] = Field(default_factory=lambda: {"default": ModelConfig()})
    base_model: str = Field("default", description="key into `models`: the System-1 model")
    agents: list[AgentConfig] = Field(
        default_factory=lambda: [AgentConfig(name="agent_a"), AgentConfig(name="agent_b")]
    )
    search: SearchConfig = Field(default_factory=SearchConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    experts: ExpertsConfig = Field(default_factory=ExpertsConfig)
    hypernet: HypernetConfig = Field(default_factory=HypernetConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)

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
        """Stable hash of the named sections (all when none): a stage reruns when it changes."""
        data = self.model_dump(mode="json")
        if sections:
            data = {s: data[s] for s in sections}
        blob = json.dumps(data, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# ---------------------------------------------------------------- loading and overrides


def _parse_value(text: str) -> Any:
    """`--set` values are YAML scalars/lists: 8, 0.5, true, null, [a, b], 'auto'."""
    try:
        return yaml.safe_load(text)
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
    value = _parse_value(raw)
    if isinstance(node, list):
        node[_index(last, node, key)] = value
    else:
        node[last] = value


def _index(part: str, seq: list, where: str) -> int:
    if not part.isdigit() or int(part) >= len(seq):
        raise ConfigError(f"override {where}: expected a list index below {len(seq)}, got {part!r}")
    return int(part)


def _format_errors(err: ValidationError, model: type[BaseModel]) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(model, e["loc"][:-1])
            lines.append(f"{loc}: unknown key; allowed keys here: {allowed}")
        else:
            got = e.get("input")
            shown = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"{loc or '(top level)'}: {e['msg']}{shown}")
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
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML: {e}") from e
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping at top level")
        data = loaded
    for assignment in overrides or []:
        apply_override(data, assignment)
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, Config)) from None


def save_config(cfg: Config, path: str | Path) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    tmp.replace(p)
