"""Low-rank decomposition methods: decoder linears replaced by two factors (kernels.factored)."""
