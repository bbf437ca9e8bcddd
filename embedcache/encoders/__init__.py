"""Encoders: a registry of specs (plain data), timm building and weight loading, and
multi-layer feature extraction."""

from embedcache.encoders.registry import DEFAULT_ENCODER, REGISTRY, EncoderSpec, get_spec

__all__ = ["DEFAULT_ENCODER", "REGISTRY", "EncoderSpec", "get_spec"]
