"""Datasets: text corpora (perplexity, calibration) and the seeded calibration sampler."""
