"""Packed and factored module types (and, later, Triton kernels with torch fallbacks)."""
