"""Deliberately broken variants of correct programs, for agreement checks and benchmarks."""

from __future__ import annotations

_PERTURB = """
def _bdc_perturb(r):
    if isinstance(r, bool):
        return not r
    if isinstance(r, int):
        return r + 1
    if isinstance(r, float):
        return r + 1.5
    if isinstance(r, str):
        return r + "?"
    if isinstance(r, list):
        return r + [None]
    if isinstance(r, tuple):
        return r + (None,)
    if r is None:
        return 0
    return None
"""


def broken_variant(program: str, entry_point: str) -> str:
    """The same program, with the entry point's every answer perturbed."""
    return (
        f"{program}\n{_PERTURB}\n_bdc_orig = {entry_point}\n"
        f"def {entry_point}(*a, **k):\n    return _bdc_perturb(_bdc_orig(*a, **k))\n"
    )
