"""Imports every reader module, each registering its layout, and gives the detection order.

Published releases first (each recognised by its own files), then slides,
then the plain image folder, which any folder of pictures matches.
"""

from embedcache.datasets import (  # noqa: F401  (each registers its layout)
    conic, consep, cpm17, cytodark0, folder, lizard, monuseg, pannuke, slides,
)

ORDER = ("pannuke", "conic", "cytodark0", "consep", "cpm17", "lizard", "monuseg", "slides", "folder")
