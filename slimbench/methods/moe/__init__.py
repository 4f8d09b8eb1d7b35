"""Mixture-of-experts routing methods (runtime: hooks that choose each token's experts)."""
