"""Clips in, normalised tensors out: datasets, decoders, transforms and the synthetic set."""
