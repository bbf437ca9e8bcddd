"""Nuclei metrics that agree with the published protocols.

Pure functions on integer label maps (numpy and scipy only):

- :mod:`~embedcache.metrics.core`: relabelling, the overlap table of a tile,
  IoU matching, PQ (DQ, SQ, TP, FP, FN, summed IoU).
- :mod:`~embedcache.metrics.jaccard`: AJI, AJI+, foreground Dice.
- :mod:`~embedcache.metrics.detection`: centroid pairing, detection and
  per-type F1, R2 of counts.
- :mod:`~embedcache.metrics.protocols`: ``hovernet``, ``pannuke`` and
  ``conic`` aggregators, each returning a plain dict.
- :mod:`~embedcache.metrics.evaluation`: read truth and prediction from disk
  and run a protocol (what ``embedcache evaluate`` calls).

See ``docs/metrics.md`` for each protocol's conventions and empty cases.
"""

from embedcache.metrics.core import (
    ClassOverlap, Instances, Matching, Overlap, PQStats, class_overlap, match, overlap, panoptic_quality, relabel,
)
from embedcache.metrics.detection import detection_f1, pair_centroids, r2_score, type_f1
from embedcache.metrics.jaccard import aji, aji_plus, foreground_dice
from embedcache.metrics.evaluation import Evaluation, evaluate
from embedcache.metrics.protocols import PROTOCOLS, conic, count_nuclei, hovernet, pannuke

__all__ = [
    "PROTOCOLS", "ClassOverlap", "Evaluation", "Instances", "Matching", "Overlap", "PQStats", "aji", "aji_plus",
    "class_overlap", "conic", "count_nuclei", "detection_f1", "evaluate", "foreground_dice", "hovernet",
    "match", "overlap", "pair_centroids", "panoptic_quality", "pannuke", "r2_score", "relabel", "type_f1",
]
