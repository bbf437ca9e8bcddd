"""Imports every reader module, each registering its layout, and sets :func:`~embedcache.datasets.registry.detect_layout`'s order.

Published releases first (each recognised by its own files), then slides,
then the plain image folder, which any folder of pictures matches.
"""

from embedcache.datasets import conic, consep, cpm17, cytodark0, folder, pannuke, slides  # noqa: F401  (each registers its layout)

ORDER = ("pannuke", "conic", "cytodark0", "consep", "cpm17", "slides", "folder")
