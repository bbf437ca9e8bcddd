"""Inference: a trained decoder over tiles, from the cache or with the encoder live.

``tiling`` (images cut into tiles, maps stitched back), ``features`` (tokens
from a store or from the encoder), ``predictor`` (decoder -> maps ->
nuclei), ``writer`` (label maps, overlays, GeoJSON), ``predict`` (the
``predict`` command) and ``evaluate`` (the one scorer of a run).
"""
