"""Encoder, predictor, decoders, teacher and heads: each written once, composed by the stages."""
