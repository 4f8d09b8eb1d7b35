"""Evaluators: perplexity, zero-shot (lm-eval), latency, size, FID (diffusion models)."""

from slimbench.evaluation import fid, latency, perplexity, size, zeroshot  # noqa: F401  (registration)
from slimbench.evaluation.base import EVALUATORS, EvalContext, EvalResult, Metric

__all__ = ["EVALUATORS", "EvalContext", "EvalResult", "Metric"]
