"""Model loading (HF id/path, GGUF packages, from-config, DiT) and architecture adapters."""
