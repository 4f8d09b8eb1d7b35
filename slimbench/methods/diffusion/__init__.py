"""Runtime methods for diffusion transformers: computation reused across sampling steps."""
