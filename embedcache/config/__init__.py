"""Settings of every step as frozen dataclasses, validated at construction; no torch needed.

Pipeline files and CLI options map one-to-one onto these fields:
:class:`ExtractConfig` (``extract``), :class:`FitConfig` with its nested
:class:`DecoderConfig`, :class:`TargetConfig` and :class:`LossConfig`
(``fit-decoder``), :class:`PostprocessConfig` (maps to nuclei),
:class:`ProbeConfig` (``probe``), :class:`CellsConfig` (``cells``), :class:`SSLConfig` (``fit-ssl``) and
:class:`RetrievalConfig` (``retrieval``). Each has ``to_dict`` and
``from_dict`` (unknown fields refused, nested configs read from mappings).

>>> FitConfig.from_dict({"epochs": 3, "decoder": {"width": 16}}).decoder.width
16
"""

from embedcache.config.base import _at_least, _Config
from embedcache.config.extract import ExtractConfig
from embedcache.config.probe import PROBE_CELL_LABELS, PROBE_PATCH_LABELS, PROBE_TILE_LABELS, CellsConfig, ProbeConfig
from embedcache.config.ssl import FAR_FROM, RetrievalConfig, SSLConfig
from embedcache.config.train import DIRECTIONS, DecoderConfig, FitConfig, LossConfig, PostprocessConfig, TargetConfig

__all__ = ["DIRECTIONS", "FAR_FROM", "PROBE_CELL_LABELS", "CellsConfig", "PROBE_PATCH_LABELS", "PROBE_TILE_LABELS", "DecoderConfig", "ExtractConfig",
           "FitConfig", "LossConfig", "PostprocessConfig", "ProbeConfig", "RetrievalConfig", "SSLConfig",
           "TargetConfig", "_Config", "_at_least"]
