"""Experiments built from the trainer and the probes: small, reproducible studies of the method."""
