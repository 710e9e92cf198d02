"""Which float type `dtype: auto` means on the device at hand.

On a GPU, bfloat16 where it is supported, else float32. On a CPU, bfloat16 only where the cores
have bf16 instructions (AMX-BF16 or AVX512-BF16): there oneDNN runs bf16 matmuls on them and
decoding is faster than in float32; on any other CPU torch emulates bf16 and it is slower (about
half float32's speed on an AVX2 core, `benchmarks/generate.py --compare-dtypes`), so `auto` stays
float32. An explicit `float32` / `bfloat16` always wins.

Nothing here imports torch at module level: the driver hashes the resolved name into stage
fingerprints (`bdc_ray.config`), so a run directory made where `auto` meant bfloat16 is not
taken as done on a machine where it means float32.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path
from typing import Any

DTYPES = ("float32", "bfloat16", "float16")
# /proc/cpuinfo flags of x86 cores whose bf16 matmuls oneDNN runs natively, best first
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def _cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (Linux x86); empty where there is none."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


# "1" / "0" overrides the detection below for `auto` on CPUs: the tests pin float32 with it so
# their figures do not depend on the CI machine's cores, and a user can try bf16 on other CPUs
ENV = "BDC_RAY_CPU_BF16"


@functools.cache
def _detected() -> str | None:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None  # ARM's bf16 paths are not measured here: float32
    flags = _cpu_flags()
    return next((f for f in BF16_FLAGS if f in flags), None)


def cpu_bf16() -> str | None:
    """The bf16 instruction set `auto` counts on for this CPU (`amx_bf16`, `avx512_bf16`, or
    `forced` by BDC_RAY_CPU_BF16=1), or None."""
    forced = os.environ.get(ENV)
    if forced is None or forced == "":
        return _detected()
    if forced not in ("0", "1"):
        raise ValueError(f"{ENV}={forced!r}: expected 1 (bf16 on CPU) or 0 (float32)")
    return "forced" if forced == "1" else None


def auto_name(device_type: str) -> str:
    """What `auto` resolves to for `device_type` ('cpu' or 'cuda') on this machine."""
    if device_type == "cuda":
        import torch

        return (
            "bfloat16"
            if torch.cuda.is_available() and torch.cuda.is_bf16_supported()
            else "float32"
        )
    return "bfloat16" if cpu_bf16() else "float32"


def resolve_name(dtype: str, device_type: str) -> str:
    if dtype == "auto":
        return auto_name(device_type)
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: expected auto or one of {', '.join(DTYPES)}")
    return dtype


def resolve(dtype: str, device: Any) -> Any:
    """The torch dtype for config value `dtype` on `device` (a torch.device or its type)."""
    import torch

    kind = device if isinstance(device, str) else device.type
    return getattr(torch, resolve_name(dtype, kind))


def fingerprint_name(dtype: str, device_type: str) -> str:
    """What a stage fingerprint records for `dtype`: `auto` on a CPU is resolved on this (the
    driver's) machine; on a GPU it stays `auto:cuda`, since the driver may have no GPU to ask."""
    if dtype != "auto":
        return dtype
    return "auto:cuda" if device_type == "cuda" else auto_name("cpu")
