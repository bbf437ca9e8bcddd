"""Probes: what each cached layer knows, by linear and kNN models on its features.

``labels`` (tile labels from a store or a CSV file), ``fit`` (the probes
themselves, arrays in, out-of-fold predictions out), ``stores`` (stores
compared together), ``tile`` (pooled vectors per tile) and ``patch`` (every
patch token against its patch's content).
"""

from __future__ import annotations

from typing import Callable, Sequence

from embedcache.config import ProbeConfig
from embedcache.probes.patch import run_patch_probes
from embedcache.probes.tile import run_tile_probes


def run_probes(paths: Sequence, config: ProbeConfig = ProbeConfig(), progress: Callable[[str], None] | None = None):
    """The probe ``config`` asks for (tile or patch level) on every store and layer.

    Returns ``(predictions, info)``; see :func:`embedcache.probes.tile.run_tile_probes`
    and :func:`embedcache.probes.patch.run_patch_probes`.
    """
    if config.level == "patch":
        return run_patch_probes(paths, config, progress)

    return run_tile_probes(paths, config, progress)


__all__ = ["run_probes"]
