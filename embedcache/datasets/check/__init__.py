"""Check a dataset before extraction: every problem at once, cheaply.

:func:`check_data` looks at a dataset the way :func:`~embedcache.datasets.open_dataset`
and the readers will, and lists everything they would refuse instead of
stopping at the first one. By default it reads headers only (PIL's
``Image.open`` gives a picture's mode and size without decoding it; ``.npy``
files are memory-mapped, so only their shape and dtype are read);
``pixels=True`` decodes every file through the readers themselves, which also
catches truncated files, label values and colour values.

What is checked, per layout:

folder
    Every image opens and is RGB, or becomes RGB the way the reader makes it
    (an opaque alpha channel is dropped: a note); grayscale, palette and
    other single-channel images are refused by the reader, so they are
    problems here. Label maps: present for every image when any image has
    one, none without its image, single-channel (an RGB-coded instance map
    is named as such), integer, of their image's size. Summary: images,
    sizes, pixels, and the tiles extraction will cut.
pannuke, conic
    Shapes and dtypes of ``images.npy``, ``masks.npy`` / ``labels.npy`` and
    ``types.npy``, and that their counts and tile sizes agree; with
    ``pixels``, every tile's values (and CoNIC type ids against the classes,
    when ``counts.csv`` names them).
slides
    Every slide opens and records its microns per pixel (or ``mpp`` is
    given); nothing is tiled (tissue detection is extraction's work).

``extract`` runs the header-only check first (:func:`require_clean_data`),
so a bad dataset fails before a model loads or a store is created.
"""

from __future__ import annotations

from pathlib import Path

from embedcache.datasets.check.folder import _check_folder
from embedcache.datasets.check.report import DataReport, Problem, _add
from embedcache.datasets.check.slides import _check_slides
from embedcache.datasets.check.release import _check_release
from embedcache.datasets.check.stacks import _check_conic, _check_pannuke
from embedcache.errors import ConfigError, DataError

# Layouts with a check of their own that reads headers only; any other layout is opened by its reader
# (:func:`~embedcache.datasets.check.release._check_release`).
CHECKS = {
    "folder": lambda report, path, pixels, tile_size, overlap, mpp=None, **_: _check_folder(
        report, path, pixels, tile_size, overlap, mpp),
    "pannuke": lambda report, path, pixels, **_: _check_pannuke(report, path, pixels),
    "conic": lambda report, path, pixels, **_: _check_conic(report, path, pixels),
    "slides": lambda report, path, tile_size, mpp, tile_mpp, **_: _check_slides(report, path, tile_size, mpp,
                                                                                tile_mpp),
}


def check_data(path, format: str = "auto", pixels: bool = False, *, tile_size: int = 256,
               overlap: int | None = None, mpp: float | None = None, tile_mpp: float = 0.5,
               magnification: str | None = None, classes: str | None = None) -> DataReport:
    """Every problem extraction would meet in a dataset, listed at once.

    Parameters
    ----------
    path : str or Path
        A dataset folder or one slide, as for :func:`~embedcache.datasets.open_dataset`.
    format : str
        ``auto`` or a registered layout.
    pixels : bool
        Decode every image and label map (slow on big datasets; catches
        truncated files and bad values). By default only headers are read.
    tile_size, overlap
        Folder and slides layouts: tiles extraction will cut, for the summary
        (``overlap`` None: a quarter of the tile, as ``extract``).
    mpp, tile_mpp
        Slides: level-0 microns per pixel overriding the files (a slide that
        records none is a problem unless this is given), microns per pixel of
        the tiles (for the summary).
    magnification, classes
        Releases: the part and class set to read, as for extract.

    Returns
    -------
    DataReport
        ``.ok`` when there are no problems.
    """
    from embedcache.datasets import FOLDER_OVERLAP
    from embedcache.datasets.registry import LAYOUTS, detect_layout, get_layout

    path = Path(path)
    report = DataReport(path, pixels=bool(pixels))
    if format != "auto":
        try:
            get_layout(format)
        except DataError as exc:
            raise ConfigError(str(exc)) from None
    if tile_size < 16:  # folder needs 32 (checked below), slides 16
        raise ConfigError(f"tile size {tile_size} is too small; use at least 16 px (32 for image folders)")
    overlap = tile_size // FOLDER_OVERLAP if overlap is None else int(overlap)
    if not 0 <= overlap <= tile_size // 2:
        raise ConfigError(f"overlap {overlap} px: use 0..{tile_size // 2} px for {tile_size}-px tiles")
    if not path.exists():
        report.problem(path, "no such file or folder")
        return report
    root = path
    if format == "auto":
        try:
            layout, root = detect_layout(path)
        except DataError as exc:
            _add(report, exc, path)
            return report
        format = layout.name
    report.layout = format
    if LAYOUTS[format].has_labels and not root.is_dir():
        report.problem(path, f"expected a folder for the {format} layout")
        return report
    if format == "folder" and tile_size < 32:
        raise ConfigError(f"tile size {tile_size} is too small; use at least 32 px")
    check = CHECKS.get(format, _check_release)
    release = {k: v for k, v in (("magnification", magnification), ("classes", classes)) if v}
    check(report, root, pixels=pixels, tile_size=tile_size, overlap=overlap, mpp=mpp, tile_mpp=tile_mpp,
          release=release)
    return report


def require_clean_data(path, format: str = "auto", **options) -> DataReport:
    """The header-only :func:`check_data`, raising one line when there are problems (what ``extract`` runs first).

    Raises
    ------
    DataError
        Giving the number of problems and the first, and the ``check-data``
        command that lists them all.
    """
    report = check_data(path, format, pixels=False, **options)
    if not report.ok:
        n = len(report.problems)
        fmt = f" --format {format}" if format != "auto" else ""
        raise DataError(f"{path}: {n} problem{'s' if n != 1 else ''} in the data, the first: {report.problems[0]}; "
                        f"run `embedcache check-data {path}{fmt}` to list them all")
    return report


__all__ = ["DataReport", "Problem", "check_data", "require_clean_data"]
