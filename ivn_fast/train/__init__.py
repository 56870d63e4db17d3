"""Training: the generic trainer and its components, and the stage tasks it runs."""
