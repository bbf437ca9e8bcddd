"""Nuclei instances and types from a decoder's maps (scikit-image watershed).

Steps, for one image:

1. foreground: P(body) + P(boundary) above ``foreground``; holes smaller
   than ``hole_area`` filled, objects smaller than ``min_size`` dropped;
2. distance-map edges: the largest directional derivative (Sobel, along
   each map's own direction) over the distance channels, scaled to 0..1 -
   high where two nuclei meet, low inside a nucleus;
3. markers: pixels where P(body) - P(boundary) exceeds ``marker`` and the
   edge map stays under ``edge``, opened by a disk of ``marker_radius``,
   components smaller than ``marker_min_size`` dropped;
4. watershed of ``(1 - P(body)) + edge_weight * edge`` from the markers,
   inside the foreground; foreground components no marker reached become
   instances of their own; instances under ``min_size`` are removed;
5. type of each instance: the majority of its pixels' most likely type.

All parameters live in :class:`PostprocessConfig`; :meth:`PostprocessConfig.for_magnification`
gives defaults for 40x (about 0.25 um/px) and 20x (about 0.5 um/px), where
nuclei cover a quarter of the pixels.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import ndimage as ndi

from embedcache.config import PostprocessConfig
from embedcache.errors import DataError


def _check_maps(cls3: np.ndarray, dist: np.ndarray, types: np.ndarray | None):
    if cls3.ndim != 3 or cls3.shape[0] != 3:
        raise DataError(f"cls3 probabilities must be (3, H, W), got shape {cls3.shape}")
    hw = cls3.shape[1:]
    if dist.ndim != 3 or dist.shape[1:] != hw:
        raise DataError(f"distance maps {dist.shape} do not match cls3 {cls3.shape}: expected (D, {hw[0]}, {hw[1]})")
    if types is not None and (types.ndim != 3 or types.shape[1:] != hw or types.shape[0] < 2):
        raise DataError(f"type probabilities {types.shape} do not match cls3 {cls3.shape}: "
                        f"expected (T + 1, {hw[0]}, {hw[1]})")


def edge_map(dist: np.ndarray, directions) -> np.ndarray:
    """Largest derivative of each distance map along its direction, scaled to 0..1.

    Parameters
    ----------
    dist : (D, H, W) ndarray of float
    directions : sequence of D (d_row, d_col)

    Returns
    -------
    (H, W) ndarray of float32
    """
    out = np.zeros(dist.shape[1:], dtype=np.float32)
    for d, (ur, uc) in enumerate(directions):
        m = dist[d].astype(np.float32)
        g = (ur * ndi.sobel(m, axis=0) + uc * ndi.sobel(m, axis=1)) / np.hypot(ur, uc)
        # Inside a nucleus the map rises along its direction: only falls mark a border between two.
        np.maximum(out, np.abs(np.minimum(g, 0)), out=out)
    hi = out.max()
    return out / hi if hi > 0 else out


def instances_from_maps(cls3: np.ndarray, dist: np.ndarray, types: np.ndarray | None = None,
                        config: PostprocessConfig = PostprocessConfig(),
                        directions=((0, 1), (1, 0), (1, 1), (1, -1))) -> dict[str, np.ndarray]:
    """Instances, their types and scores from the decoder's maps of one image.

    Parameters
    ----------
    cls3 : (3, H, W) ndarray of float
        Probabilities of background, body and boundary.
    dist : (D, H, W) ndarray of float
        Directional distance maps in -1..1.
    types : (T + 1, H, W) ndarray of float, optional
        Type probabilities, class 0 being background.
    config : PostprocessConfig
    directions : sequence of D (d_row, d_col)
        Direction of each distance channel.

    Returns
    -------
    dict
        ``inst`` (H, W) int32 instance ids 1..K; ``types`` (H, W) int32 type
        of each instance's pixels (0 without a type head); ``score`` (K,)
        mean foreground probability of each instance; ``type_id`` (K,) and
        ``type_score`` (K,) share of the instance's pixels voting for it.

    Examples
    --------
    >>> cls3 = np.zeros((3, 32, 32)); cls3[0] = 1
    >>> cls3[:, 8:24, 8:24] = np.array([0, 1, 0])[:, None, None]
    >>> out = instances_from_maps(cls3, np.zeros((4, 32, 32)))
    >>> int(out["inst"].max()), int((out["inst"] == 1).sum())
    (1, 256)
    """
    from skimage.morphology import disk, remove_small_holes, remove_small_objects
    from skimage.segmentation import relabel_sequential, watershed

    _check_maps(cls3, dist, types)
    if len(directions) != dist.shape[0]:
        raise DataError(f"{dist.shape[0]} distance maps but {len(directions)} directions")
    p_body, p_bnd = cls3[1].astype(np.float32), cls3[2].astype(np.float32)
    p_fg = p_body + p_bnd
    fg = p_fg > config.foreground
    if config.hole_area:
        fg = remove_small_holes(fg, max_size=config.hole_area) if _has_max_size() else \
            remove_small_holes(fg, area_threshold=config.hole_area)
    fg = _remove_small(fg, config.min_size, remove_small_objects)
    edge = edge_map(dist, directions)
    markers = fg & (p_body - p_bnd > config.marker) & (edge < config.edge)
    if config.marker_radius:
        markers = ndi.binary_opening(markers, structure=disk(config.marker_radius))
    markers, _ = ndi.label(markers)
    markers = _remove_small_labels(markers, config.marker_min_size)
    energy = (1 - p_body) + config.edge_weight * edge
    inst = watershed(energy, markers, mask=fg)
    unreached, n_new = ndi.label(fg & (inst == 0))
    if n_new:
        inst = np.where(unreached > 0, unreached + inst.max(), inst)
    inst = _remove_small_labels(inst, config.min_size)
    inst = relabel_sequential(inst.astype(np.int32))[0]
    return _instance_types(inst, p_fg, types)


@lru_cache(maxsize=1)
def _has_max_size() -> bool:
    import inspect

    from skimage.morphology import remove_small_holes

    return "max_size" in inspect.signature(remove_small_holes).parameters


def _remove_small(x: np.ndarray, size: int, remove_small_objects) -> np.ndarray:
    # scikit-image >= 0.26 names the bound max_size (objects of at most that size go).
    if not size:
        return x
    if _has_max_size():
        return remove_small_objects(x, max_size=size - 1)
    return remove_small_objects(x, min_size=size)


def _remove_small_labels(labels: np.ndarray, size: int) -> np.ndarray:
    """Labels with fewer than ``size`` pixels set to 0."""
    if not size or not labels.any():
        return labels
    area = np.bincount(labels.ravel())
    small = area < size
    small[0] = False
    return np.where(small[labels], 0, labels)


def _instance_types(inst: np.ndarray, p_fg: np.ndarray, types: np.ndarray | None) -> dict[str, np.ndarray]:
    k = int(inst.max())
    flat = inst.ravel()
    area = np.bincount(flat, minlength=k + 1)[1:].astype(np.float64)
    score = np.bincount(flat, weights=p_fg.ravel(), minlength=k + 1)[1:] / np.maximum(area, 1)
    type_map = np.zeros(inst.shape, dtype=np.int32)
    type_id = np.zeros(k, dtype=np.int32)
    type_score = np.zeros(k, dtype=np.float64)
    if types is not None and k:
        n_cls = types.shape[0]
        vote = np.argmax(types[1:], axis=0).ravel() + 1  # the most likely type, background excluded
        counts = np.bincount(flat * n_cls + vote, minlength=(k + 1) * n_cls).reshape(k + 1, n_cls)[1:]
        type_id = counts.argmax(1).astype(np.int32)
        type_score = counts.max(1) / np.maximum(area, 1)
        type_map = np.concatenate([[0], type_id])[inst].astype(np.int32)
    return {"inst": inst.astype(np.int32), "types": type_map, "score": score.astype(np.float32),
            "type_id": type_id, "type_score": type_score.astype(np.float32)}
