from .metrics import mean_pass_at_k, pass_at_k, pass_rate

__all__ = ["mean_pass_at_k", "pass_at_k", "pass_rate"]
