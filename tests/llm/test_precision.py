"""`dtype: auto`: bf16 only on CPUs with bf16 instructions, float32 elsewhere, and fingerprints
that record what it meant."""

import platform

import pytest
import torch

from bdc_ray.config import load_config
from bdc_ray.disentangle.train import deepspeed_config
from bdc_ray.llm import precision
from bdc_ray.llm.base import Sampling
from bdc_ray.llm.transformers_backend import TransformersBackend

AVX2 = {"fpu", "sse2", "avx", "avx2", "fma"}  # this project's CI machine has no bf16 units
AMX = AVX2 | {"avx512f", "avx512_bf16", "amx_tile", "amx_bf16"}


@pytest.fixture
def cpu(monkeypatch):
    """Pretend to run on an x86 CPU with the given /proc/cpuinfo flags."""
    monkeypatch.delenv(precision.ENV, raising=False)
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")

    def use(flags, machine="x86_64"):
        monkeypatch.setattr(precision, "_cpu_flags", lambda: set(flags))
        monkeypatch.setattr(platform, "machine", lambda: machine)
        precision._detected.cache_clear()

    yield use
    precision._detected.cache_clear()


def test_auto_is_bf16_only_where_the_cpu_has_bf16_instructions(cpu):
    cpu(AVX2)
    assert precision.cpu_bf16() is None
    assert precision.resolve("auto", "cpu") is torch.float32
    cpu(AVX2 | {"avx512f", "avx512_bf16"})
    assert precision.cpu_bf16() == "avx512_bf16"
    assert precision.resolve("auto", torch.device("cpu")) is torch.bfloat16
    cpu(AMX)
    assert precision.cpu_bf16() == "amx_bf16"
    assert precision.resolve("auto", "cpu") is torch.bfloat16
    assert precision.resolve("float32", "cpu") is torch.float32  # an explicit choice wins
    cpu(AVX2)
    assert precision.resolve("bfloat16", "cpu") is torch.bfloat16
    cpu({"fp", "asimd", "bf16"}, machine="aarch64")  # not measured on ARM: float32
    assert precision.resolve("auto", "cpu") is torch.float32
    with pytest.raises(ValueError, match="dtype 'half'"):
        precision.resolve_name("half", "cpu")


def test_the_environment_overrides_the_detection(cpu, monkeypatch):
    cpu(AVX2)
    monkeypatch.setenv(precision.ENV, "1")
    assert precision.resolve("auto", "cpu") is torch.bfloat16
    cpu(AMX)
    monkeypatch.setenv(precision.ENV, "0")
    assert precision.resolve("auto", "cpu") is torch.float32
    monkeypatch.setenv(precision.ENV, "yes")
    with pytest.raises(ValueError, match=precision.ENV):
        precision.cpu_bf16()


def test_this_machines_cpu_flags_are_read():
    """The detection reads real flags here; a parser that found none would pin float32 forever."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("x86 flags")
    flags = precision._cpu_flags()
    assert {"fpu", "sse2"} <= flags


def test_the_backend_loads_and_generates_in_what_auto_means(cpu, tiny_model_path):
    sp = Sampling(max_tokens=6, ignore_eos=True)
    cpu(AVX2)
    fp32 = TransformersBackend(tiny_model_path, dtype="auto", device="cpu")
    assert fp32.model.dtype == torch.float32
    cpu(AMX)
    bf16 = TransformersBackend(tiny_model_path, dtype="auto", device="cpu")
    assert bf16.model.dtype == torch.bfloat16
    out = bf16.generate(["def add(a, b):"], sp)  # bf16 decode runs here (emulated without AMX)
    assert out[0].completion_tokens == 6
    forced = TransformersBackend(tiny_model_path, dtype="float32", device="cpu")
    assert forced.model.dtype == torch.float32


def test_fingerprints_record_what_auto_means_on_this_machine(cpu):
    def fp(*sets):
        return load_config(None, list(sets)).fingerprint("models@agents", "models@base")

    cpu(AVX2)
    fp32_here = fp()
    assert fp32_here == fp("models.default.dtype=float32")
    cpu(AMX)
    assert fp() == fp("models.default.dtype=bfloat16")
    assert fp() != fp32_here  # a run made where auto meant float32 is not done here
    # a GPU replica keeps `auto` (the driver may have no GPU to ask): the CPU does not matter
    gpu = fp("models.default.num_gpus=1")
    cpu(AVX2)
    assert fp("models.default.num_gpus=1") == gpu
    # training and the hypernetwork record theirs too
    cfg = load_config(None)
    assert cfg.fingerprint("experts") != (cpu(AMX) or cfg.fingerprint("experts"))
    cpu(AVX2)
    assert cfg.fingerprint("hypernet") != (cpu(AMX) or cfg.fingerprint("hypernet"))


def test_experts_train_in_bf16_where_auto_means_it(cpu):
    experts = load_config(None).experts
    assert experts.dtype == "auto"
    cpu(AVX2)
    assert "bf16" not in deepspeed_config(experts, world=1)
    cpu(AMX)
    assert deepspeed_config(experts, world=1)["bf16"] == {"enabled": True}
    pinned = load_config(None, ["experts.dtype=float32"]).experts
    assert "bf16" not in deepspeed_config(pinned, world=1)
