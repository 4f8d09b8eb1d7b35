"""Evaluators: perplexity, latency, size (zero-shot and FID plug in the same way)."""

from slimbench.evaluation import latency, perplexity, size  # noqa: F401  (registration)
from slimbench.evaluation.base import EVALUATORS, EvalContext, EvalResult, Metric

__all__ = ["EVALUATORS", "EvalContext", "EvalResult", "Metric"]
