"""Microns per pixel of each image, and images and label maps resampled to one working resolution.

Folders of images mix magnifications (CPM-15 holds 20x and 40x images), so
a resolution is found per image, first that applies:

1. the file's own metadata: a TIFF's ``XResolution``/``ResolutionUnit``
   tags, a PNG's ``pHYs`` chunk (as PIL reads them), kept only when they
   give a microscope's resolution (:data:`PLAUSIBLE`: 72 dpi, a screen
   default, would be 353 um/px);
2. ``mpp.csv`` beside the images: a header ``image,mpp``, then one row per
   image (its file name or stem);
3. one value for the whole folder (``--mpp``);
4. the resolution the release documents (``TileDataset.mpp``);
5. else unknown, and said so.

With a working resolution (``extract --working-mpp``) every image is
resampled by ``its mpp / working mpp`` before it is cut into tiles, so the
encoder sees one scale: pixels with PIL's bicubic filter (which widens its
support when it shrinks, so downsampling is antialiased), label maps by
nearest neighbour, so instance ids are kept as they are.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from embedcache.errors import DataError

PLAUSIBLE = (0.05, 20.0)  # um/px a slide scanner or microscope camera records
TABLE = "mpp.csv"


def mpp_from_metadata(path: Path) -> float | None:
    """Microns per pixel an image file records (TIFF resolution tags, PNG ``pHYs``), or None.

    >>> mpp_from_metadata(Path("no-such-file.png")) is None
    True
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            tags = getattr(im, "tag_v2", None)
            if tags is not None and 282 in tags:
                unit = {2: 25400.0, 3: 10000.0}.get(int(tags.get(296, 2)))  # microns per inch or per cm
                res = float(tags[282])
                mpp = unit / res if unit and res > 0 else None
            else:
                dpi = im.info.get("dpi")
                mpp = 25400.0 / float(dpi[0]) if dpi and float(dpi[0]) > 0 else None
    except (OSError, ValueError, TypeError, ZeroDivisionError):
        return None
    if mpp is None or not PLAUSIBLE[0] <= mpp <= PLAUSIBLE[1]:
        return None
    return round(mpp, 6)


def read_mpp_table(folder: Path) -> dict[str, float]:
    """``folder/mpp.csv`` as ``{image name or stem: mpp}``; empty when there is none.

    Raises
    ------
    DataError
        A missing header, a row without two values, or an mpp that is not a
        positive number: ``mpp.csv:LINE: what is wrong``.
    """
    path = Path(folder) / TABLE
    if not path.is_file():
        return {}
    out: dict[str, float] = {}
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows or [c.strip().lower() for c in rows[0][:2]] != ["image", "mpp"]:
        raise DataError(f"{path}:1: expected the header 'image,mpp' (then one row per image: its name and its "
                        "microns per pixel)")
    for line, row in enumerate(rows[1:], 2):
        if not any(c.strip() for c in row):
            continue
        try:
            name, value = row[0].strip(), float(row[1])
        except (IndexError, ValueError):
            raise DataError(f"{path}:{line}: expected 'image,mpp' with a number, got {','.join(row)!r}") from None
        if not value > 0:
            raise DataError(f"{path}:{line}: microns per pixel must be positive, got {value:g}")
        out[name] = value
    return out


def image_mpps(files: list[Path], names: list[str], folder: Path, given: float | None = None,
               release: float | None = None) -> tuple[list[float | None], list[str]]:
    """Microns per pixel of each image and where it came from (module docstring for the order).

    Returns
    -------
    mpps : list of float or None
    sources : list of str
        ``metadata``, ``mpp.csv``, ``--mpp``, ``release`` or ``unknown``, per image.

    Raises
    ------
    DataError
        ``mpp.csv`` is malformed or names an image that is not there.
    """
    table = read_mpp_table(folder)
    known = {n for f, n in zip(files, names) for n in (n, f.name, f.stem)}
    stray = sorted(set(table) - known)
    if stray:
        raise DataError(f"{Path(folder) / TABLE}: no image {stray[0]!r} in {folder}; name each image by its file "
                        "name or stem")
    mpps, sources = [], []
    for f, name in zip(files, names):
        for value, source in ((mpp_from_metadata(f), "metadata"),
                              (table.get(name, table.get(f.name, table.get(f.stem))), TABLE),
                              (given, "--mpp"), (release, "release")):
            if value is not None:
                mpps.append(float(value))
                sources.append(source)
                break
        else:
            mpps.append(None)
            sources.append("unknown")
    return mpps, sources


def scaled_shape(shape: tuple[int, int], scale: float) -> tuple[int, int]:
    """``(h, w)`` times ``scale``, rounded, at least 1 px.

    >>> scaled_shape((392, 459), 2.0)
    (784, 918)
    """
    return max(1, int(round(shape[0] * scale))), max(1, int(round(shape[1] * scale)))


def resize_image(rgb: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``(H, W, 3) uint8`` resampled to ``shape`` (bicubic; antialiased when shrinking)."""
    from PIL import Image

    if tuple(rgb.shape[:2]) == tuple(shape):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((shape[1], shape[0]), Image.BICUBIC))


def resize_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Label maps ``(H, W[, C])`` resampled to ``shape`` by nearest neighbour: ids kept, none invented.

    Each output pixel takes the label under its centre.

    >>> resize_labels(np.array([[1, 2], [3, 4]]), (4, 4))[0]
    array([1, 1, 2, 2])
    """
    h, w = labels.shape[:2]
    if (h, w) == tuple(shape):
        return labels
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * h / shape[0]).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * w / shape[1]).astype(np.int64), w - 1)
    return labels[rows[:, None], cols[None, :]]
