"""The dataset layouts embedcache reads, registered by name.

Each layout is a small module under ``embedcache.datasets`` that registers
one :class:`Layout`: how to recognise its release in a folder the user
points at (the archive's root, or a folder inside it that still identifies
the dataset), how to open it, and what a user needs to know to get it
(where to download it, its licence, the folder to point at). ``--format
auto`` is :func:`detect_layout`, one loop over :data:`LAYOUTS` in
registration order (specific releases before the generic image folder);
``embedcache datasets`` lists the same entries. What a release knows about
its own data (splits, classes, microns per pixel, cohorts) is set by its
reader on the :class:`~embedcache.datasets.base.TileDataset`, not here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from embedcache.errors import DataError


@dataclass(frozen=True)
class Layout:
    """One dataset layout.

    Attributes
    ----------
    name : str
        What ``--format`` calls it.
    title : str
        The release's name as its publishers write it.
    find : callable
        ``find(path) -> Path or None``: the folder to read when ``path`` (a
        folder or file) holds this layout, else None. Must be cheap (names
        and headers only).
    open : callable
        ``open(path, **options) -> TileDataset``; ``options`` are those of
        :func:`~embedcache.datasets.open_dataset` (a reader takes the ones
        it uses).
    stack : bool
        Every tile is a whole image (``.npy`` stacks of patches); otherwise
        images are cut into tiles and put back together by source image.
    has_labels : bool
        The layout can hold label maps (not slides): tried when looking for
        labels only.
    labels_only : callable or None
        ``labels_only(path) -> bool``: the folder holds label maps without
        images (prediction folders), for :func:`detect_layout` with
        ``labels_only``.
    url, licence, point_at, note : str
        For ``embedcache datasets``: where to download it, under which
        licence, which folder to give embedcache, and anything else a user
        must know (stain, magnification).
    """

    name: str
    title: str
    find: Callable[[Path], Path | None]
    open: Callable[..., object]
    stack: bool = False
    has_labels: bool = True
    labels_only: Callable[[Path], bool] | None = None
    url: str = ""
    licence: str = ""
    point_at: str = ""
    note: str = ""


LAYOUTS: dict[str, Layout] = {}


def register(layout: Layout) -> Layout:
    """Add ``layout`` to :data:`LAYOUTS` (a name registered twice is a programming error)."""
    if layout.name in LAYOUTS:
        raise ValueError(f"dataset layout {layout.name!r} is registered twice")
    LAYOUTS[layout.name] = layout
    return layout


def get_layout(name: str) -> Layout:
    """The registered layout called ``name``.

    Raises
    ------
    DataError
        No layout of that name.
    """
    _load_all()
    if name not in LAYOUTS:
        raise DataError(f"unknown format {name!r}; use one of auto, {', '.join(LAYOUTS)}")
    return LAYOUTS[name]


def detect_layout(path: Path, labels_only: bool = False) -> tuple[Layout, Path]:
    """The first registered layout that recognises ``path``, and the folder it reads.

    Raises
    ------
    DataError
        No layout recognises ``path``.
    """
    _load_all()
    path = Path(path)
    for layout in LAYOUTS.values():
        if labels_only and not layout.has_labels:
            continue
        root = layout.find(path)
        if root is not None:
            return layout, root
        if labels_only and layout.labels_only is not None and path.is_dir() and layout.labels_only(path):
            return layout, path
    if not path.is_dir():
        raise DataError(f"{path}: expected a folder of a dataset (see `embedcache datasets` for the layouts read) "
                        "or a slide")
    raise DataError(f"{path}: cannot tell the layout (no release, .npy stack or image files found); "
                    "see `embedcache datasets` for the layouts read, or pass --format")


def is_stack(name: str | None) -> bool:
    """Whether every tile of layout ``name`` is a whole image (False for unknown names and None)."""
    _load_all()
    return bool(name in LAYOUTS and LAYOUTS[name].stack)


def _load_all() -> None:
    """Import the reader modules, which register their layouts, and put :data:`LAYOUTS` in detection order
    (:data:`embedcache.datasets.releases.ORDER`; a layout it does not list goes before slides and folder)."""
    global _ordered
    if _ordered:
        return
    from embedcache.datasets import releases

    rank = {n: k for k, n in enumerate(releases.ORDER)}
    generic = rank.get("slides", len(rank)) - 0.5
    items = sorted(LAYOUTS.items(), key=lambda kv: rank.get(kv[0], generic))
    LAYOUTS.clear()
    LAYOUTS.update(items)
    _ordered = True


_ordered = False
