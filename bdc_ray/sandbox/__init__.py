"""Isolated execution of untrusted programs against tests (see supervisor.Sandbox)."""

from .supervisor import CheckResult, Limits, Sandbox, TestResult

__all__ = ["CheckResult", "Limits", "Sandbox", "TestResult"]
