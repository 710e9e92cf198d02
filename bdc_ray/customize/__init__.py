"""Customize (SPEC.md section 4): the gated mixture of LoRA experts, the input-aware hypernetwork
that produces its gates, and the customised solver that generates with per-request gates."""
