"""Layer dropping: remove whole attention/MLP sublayers or blocks (execution path dropped-modules)."""
