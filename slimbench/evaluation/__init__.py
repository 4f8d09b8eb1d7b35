"""Evaluators: perplexity, zero-shot (lm-eval), latency, size (FID plugs in the same way)."""

from slimbench.evaluation import latency, perplexity, size, zeroshot  # noqa: F401  (registration)
from slimbench.evaluation.base import EVALUATORS, EvalContext, EvalResult, Metric

__all__ = ["EVALUATORS", "EvalContext", "EvalResult", "Metric"]
