"""Mixture-of-experts: routing rules, grouped dispatch, MoEfication of dense SwiGLU FFNs, routers."""
