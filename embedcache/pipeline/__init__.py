"""Pipelines: a whole encoder comparison from one YAML file, every step keyed by its inputs and reused."""

from embedcache.pipeline.spec import Pipeline, load_pipeline

__all__ = ["Pipeline", "load_pipeline"]
