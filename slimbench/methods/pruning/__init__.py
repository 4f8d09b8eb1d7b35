"""Pruning methods (unstructured, N:M, structured)."""
