"""Customize (docs/method.md#customize-the-input-aware-hypernetwork): the gated mixture of LoRA experts, the input-aware hypernetwork
that produces its gates, and the customised solver that generates with per-request gates."""
