"""cluster.yaml passes Ray's own autoscaler validation (what `ray up` runs before it talks to
the cloud), and configs/gpu.yaml is a valid config that puts the work on GPUs."""

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from bdc_ray.config import load_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def raw():
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_passes_ray_autoscaler_validation(raw):
    cfg = prepare_config(copy.deepcopy(raw))
    validate_config(cfg)
    types = cfg["available_node_types"]
    assert cfg["provider"]["type"] == "aws" and cfg["head_node_type"] == "head"
    assert types["head"]["resources"].get("GPU", 0) == 0 and types["head"]["max_workers"] == 0
    for name in ("gpu_inference", "gpu_training"):  # autoscaling GPU workers
        t = types[name]
        assert t["resources"]["GPU"] >= 1 and t["min_workers"] == 0 < t["max_workers"], name
    assert types["gpu_training"]["resources"]["GPU"] > types["gpu_inference"]["resources"]["GPU"]
    setup = " ".join(cfg["setup_commands"])
    assert "[gpu]" in setup and "bdc-ray" in setup
    assert cfg["file_mounts"]["~/bdc-ray"] == "."  # the project, configs/ included
    for cmd in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]:
        if "ray start" in cmd:
            assert "RAY_AUTH_MODE=token" in cmd  # every node in the same auth mode


def test_ray_validation_rejects_a_broken_cluster_yaml(raw):
    bad = copy.deepcopy(raw)
    bad["available_node_types"]["gpu_training"]["node_confg"] = bad["available_node_types"][
        "gpu_training"
    ].pop("node_config")
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(bad))


def test_gpu_config_puts_agents_on_vllm_and_experts_on_several_gpus():
    cfg = load_config(ROOT / "configs" / "gpu.yaml")
    agent_models = {cfg.models[a.model].path for a in cfg.agents}
    assert any("Qwen2.5-Coder" in p for p in agent_models)
    assert any("deepseek-coder" in p for p in agent_models)
    assert all(cfg.models[a.model].backend == "vllm" for a in cfg.agents)
    assert all(cfg.models[a.model].num_gpus >= 1 for a in cfg.agents)
    assert cfg.experts.use_gpu and cfg.experts.num_workers > 1 and cfg.experts.zero_stage >= 2
    assert cfg.serve.num_gpus >= 1 and cfg.serve.max_replicas > cfg.serve.min_replicas
    assert cfg.serve.api_key_env  # a network-facing server keeps its key on


def test_every_gpu_role_asks_for_the_node_type_that_can_host_it(raw):
    """Each role of configs/gpu.yaml names a custom resource that exactly one node type of
    cluster.yaml advertises, and that node type has the GPUs and CPUs the role asks for: the
    autoscaler starts that type for it, and a trainer never lands on an inference node."""
    types = raw["available_node_types"]
    cfg = load_config(ROOT / "configs" / "gpu.yaml")
    base = cfg.models[cfg.base_model]
    agents = [cfg.models[a.model] for a in cfg.agents]
    roles = {
        **{f"agent model {m.path}": (m.resources, m.num_gpus, m.num_cpus) for m in agents},
        "system-1 engine": (base.resources, base.num_gpus, base.num_cpus),
        "serve replica": (cfg.serve.resources, cfg.serve.num_gpus, cfg.serve.num_cpus),
        "expert trainer": (cfg.experts.resources_per_worker, 1, cfg.experts.cpus_per_worker),
        "tune trial": (
            cfg.hypernet.tune.resources_per_trial,
            cfg.hypernet.tune.gpus_per_trial,
            cfg.hypernet.tune.cpus_per_trial,
        ),
        "sandbox pool": (cfg.eval.executor_resources, 0, cfg.eval.executor_cpus),
    }
    placed = {}
    for role, (resources, gpus, cpus) in roles.items():
        assert len(resources) == 1, f"{role}: asks for no node type ({resources})"
        ((name, amount),) = resources.items()
        hosts = [t for t, spec in types.items() if spec["resources"].get(name, 0) >= amount > 0]
        assert len(hosts) == 1, f"{role}: {name} is advertised by {hosts}"
        node = types[hosts[0]]["resources"]
        assert node.get("GPU", 0) >= gpus and node["CPU"] >= cpus, (role, node)
        placed[role] = hosts[0]
    assert placed["expert trainer"] == placed["tune trial"] == "gpu_training"
    assert placed["serve replica"] == placed["system-1 engine"] == "gpu_inference"
    assert placed["sandbox pool"] == "head"
