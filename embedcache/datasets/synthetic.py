"""Deterministic synthetic H&E-like tiles in the PanNuke layout.

Good enough to exercise every stage end to end without real data: a
textured eosin background, nuclei of the five PanNuke types that differ in
size, shape, colour and texture, touching and overlapping nuclei, and a
tissue label per tile that changes the mix of nucleus types (so tile-level
probes have something to find).

=============  ===========  ==========================================
type           size (px)    look
=============  ===========  ==========================================
neoplastic     radius 8-12  large, irregular outline, dark, coarse
inflammatory   radius 3-5   small, round, very dark, smooth
connective     9-13 x 2-3   elongated spindle, medium purple
dead           radius 2-4   small fragments, near black
epithelial     radius 5-8   round, lighter, pale centre (vesicular)
=============  ===========  ==========================================
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from skimage.draw import polygon

TISSUES = {
    # tissue: (probabilities of the 5 nucleus types, nuclei per tile, background RGB)
    "breast": ((0.55, 0.10, 0.25, 0.02, 0.08), (28, 45), (232, 178, 205)),
    "colon": ((0.15, 0.20, 0.10, 0.05, 0.50), (35, 55), (225, 170, 200)),
    "lymph_node": ((0.05, 0.80, 0.08, 0.05, 0.02), (60, 90), (215, 160, 200)),
    "skin": ((0.05, 0.10, 0.35, 0.02, 0.48), (20, 35), (238, 190, 210)),
    "liver": ((0.30, 0.10, 0.10, 0.25, 0.25), (25, 40), (220, 150, 175)),
}
_TYPE_COLOUR = {  # RGB of the nucleus body
    1: (95, 55, 125),
    2: (55, 30, 95),
    3: (135, 90, 160),
    4: (40, 20, 50),
    5: (150, 110, 180),
}


def _outline(rng, t: int, cy: float, cx: float) -> tuple[np.ndarray, np.ndarray]:
    """Polygon vertices (rows, cols) of a nucleus of type ``t``."""
    theta = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    angle = rng.uniform(0, np.pi)
    if t == 1:
        a, b = rng.uniform(8, 12), rng.uniform(6.5, 10)
        wobble = 1 + 0.18 * np.sin(3 * theta + rng.uniform(0, 6)) + 0.08 * np.sin(5 * theta + rng.uniform(0, 6))
    elif t == 2:
        a = b = rng.uniform(3, 5)
        wobble = 1 + 0.04 * np.sin(2 * theta)
    elif t == 3:
        a, b = rng.uniform(9, 13), rng.uniform(2, 3)
        wobble = np.ones_like(theta)
    elif t == 4:
        a, b = rng.uniform(2, 4), rng.uniform(1.5, 3)
        wobble = 1 + 0.3 * np.sin(4 * theta + rng.uniform(0, 6))
    else:
        a, b = rng.uniform(5, 8), rng.uniform(4.5, 7)
        wobble = 1 + 0.05 * np.sin(2 * theta)
    x, y = a * np.cos(theta) * wobble, b * np.sin(theta) * wobble
    rows = cy + x * np.sin(angle) + y * np.cos(angle)
    cols = cx + x * np.cos(angle) - y * np.sin(angle)
    return rows, cols


def _tile(rng: np.random.Generator, tissue: str, size: int):
    probs, (lo, hi), bg = TISSUES[tissue]
    # Background: eosin pink with low-frequency stain variation and fibres.
    field = ndi.gaussian_filter(rng.standard_normal((size, size)), 12) * 40
    fibres = ndi.gaussian_filter(rng.standard_normal((size, size)), (1, 6)) * 25
    image = np.asarray(bg, dtype=np.float32)[None, None, :] + (field + fibres)[..., None] * np.array([0.6, 1.0, 0.7])
    image += rng.normal(0, 4, image.shape)

    inst = np.zeros((size, size), dtype=np.int32)
    types = np.zeros((size, size), dtype=np.int32)
    n = int(rng.integers(lo, hi + 1))
    centres: list[tuple[float, float, int]] = []
    for k in range(1, n + 1):
        t = int(rng.choice(5, p=probs)) + 1
        if centres and rng.random() < 0.25:
            # Touching or overlapping a previous nucleus: the later one occludes.
            py, px, pt = centres[int(rng.integers(len(centres)))]
            d = rng.uniform(6, 14)
            phi = rng.uniform(0, 2 * np.pi)
            cy, cx = py + d * np.sin(phi), px + d * np.cos(phi)
        else:
            cy, cx = rng.uniform(4, size - 4, 2)
        rows, cols = _outline(rng, t, cy, cx)
        rr, cc = polygon(rows, cols, shape=(size, size))
        if rr.size < 6:
            continue
        inst[rr, cc] = k
        types[rr, cc] = t
        centres.append((cy, cx, t))
        colour = np.asarray(_TYPE_COLOUR[t], dtype=np.float32) * rng.uniform(0.9, 1.1)
        grain = {1: 22, 2: 6, 3: 10, 4: 4, 5: 12}[t]
        pix = colour[None, :] + rng.normal(0, grain, (rr.size, 1))
        if t == 5:  # pale vesicular centre
            dist = np.hypot(rr - cy, cc - cx)
            pix += (np.clip(4 - dist, 0, 4) * 12)[:, None]
        image[rr, cc] = pix
    # Drop ids occluded to nothing and make ids contiguous.
    _, inverse = np.unique(np.concatenate([[0], inst.ravel()]), return_inverse=True)
    inst = inverse[1:].reshape(inst.shape).astype(np.int32)
    image = ndi.gaussian_filter(image, (0.7, 0.7, 0))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), inst, types


def make_tiles(n: int, seed: int = 0, size: int = 256):
    """Synthetic tiles with labels.

    Returns
    -------
    images : (n, size, size, 3) ndarray of uint8
    labels : (n, size, size, 2) ndarray of int32
        Instance ids 1..K and PanNuke type ids 1..5.
    tissue : list of str
    """
    rng = np.random.default_rng(seed)
    names = list(TISSUES)
    tissue = [names[i % len(names)] for i in range(n)]
    rng.shuffle(tissue)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    labels = np.empty((n, size, size, 2), dtype=np.int32)
    for i in range(n):
        tile_rng = np.random.default_rng([seed, i])
        images[i], labels[i, ..., 0], labels[i, ..., 1] = _tile(tile_rng, tissue[i], size)
    return images, labels, tissue


def labels_to_pannuke_masks(labels: np.ndarray) -> np.ndarray:
    """(N, H, W, 2) instance/type maps to PanNuke (N, H, W, 6) masks."""
    inst, types = labels[..., 0], labels[..., 1]
    masks = np.zeros((*labels.shape[:-1], 6), dtype=np.int32)
    for c in range(5):
        masks[..., c] = np.where(types == c + 1, inst, 0)
    masks[..., 5] = (inst == 0).astype(np.int32)
    return masks


def _refuse_other_files(out: Path) -> None:
    """``out`` may be new, empty or an earlier demo-data output (written again); anything else (a real dataset)
    is refused before a file is written, so none of it is replaced or mixed with synthetic tiles."""
    import re

    from embedcache.errors import DataError

    if not out.is_dir():
        return
    ours = {"images.npy", "masks.npy", "types.npy"}
    for p in sorted(out.iterdir()):
        if not (p.is_dir() and re.fullmatch(r"fold\d+", p.name)
                and all(q.name in ours or q.name.endswith(".tmp.npy") for q in p.iterdir())):
            raise DataError(f"{out} already holds {p.name}, which demo-data did not write; give a new or empty "
                            "folder as OUT")


def write_demo_data(out, n_tiles: int = 48, seed: int = 0, folds: int = 3, size: int = 256) -> list[Path]:
    """Write synthetic tiles in the PanNuke layout, one folder per fold.

    Tiles are dealt to folds round-robin: ``out/fold1``, ``out/fold2``, ...
    each holding ``images.npy`` (uint8), ``masks.npy`` (int32; real PanNuke
    uses float64, the readers take both) and ``types.npy`` (tissue names).
    Files are written under temporary names and renamed, so an interrupted
    run leaves no half-written array behind.

    Returns the fold folders.

    Raises
    ------
    DataError
        Fewer tiles than folds, or ``out`` holds anything but an earlier
        demo-data output (a real dataset is never written into).
    """
    from embedcache.errors import DataError

    if n_tiles < folds:
        raise DataError(f"--tiles {n_tiles} is fewer than the {folds} folds; ask for at least {folds}")
    out = Path(out)
    _refuse_other_files(out)
    images, labels, tissue = make_tiles(n_tiles, seed=seed, size=size)
    tissue = np.asarray(tissue)
    dirs = []
    for f in range(folds):
        sel = np.arange(f, n_tiles, folds)
        d = out / f"fold{f + 1}"
        d.mkdir(parents=True, exist_ok=True)
        for name, arr in (("images", images[sel]), ("masks", labels_to_pannuke_masks(labels[sel])),
                          ("types", tissue[sel])):
            tmp = d / f".{name}.tmp.npy"
            np.save(tmp, arr)
            tmp.replace(d / f"{name}.npy")
        dirs.append(d)
    return dirs
