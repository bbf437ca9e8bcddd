"""Images of any size, each with its label maps, cut into tiles: what the folder layout and the releases
of whole images (CoNSeP, CPM-17, Lizard, MoNuSeg, CytoDArk0) share.

Each image is cut into ``tile_size`` tiles from its top-left corner,
neighbours overlapping by ``overlap`` px (:func:`embedcache.geometry.plan_tiles`,
as live prediction cuts images, so a store's tiles are the ones live
prediction would see and cached prediction stitches them without seams).
Tiles that run past the image's right or bottom edge are padded: pixels with
white (255, the colour of empty glass in H&E) and labels with 0; the covered
part is recorded per tile as ``valid`` (height, width). Nothing is resized.
A reader says which files make each image and how to read its labels
(:meth:`ImageSetDataset._load_label`); the whole-image labels are what
``evaluate`` scores against (:meth:`ImageSetDataset.source_labels`).
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from embedcache.datasets.base import TileDataset, TileIndex, to_uint8_rgb
from embedcache.errors import DataError
from embedcache.geometry import plan_tiles

PAD_VALUE = 255
OVERLAP_DIVISOR = 4  # images are tiled with neighbours overlapping by tile_size // 4 px by default


def read_image_file(path: Path) -> np.ndarray:
    """An image file as an array (PIL for pictures, numpy for ``.npy``)."""
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False)
        with Image.open(path) as im:
            return np.asarray(im)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read image ({exc})") from None


_SINGLE = {"1": "a 1-bit (black and white) image", "L": "a grayscale image", "P": "a palette image",
           "I": "a single-channel 32-bit image", "F": "a single-channel floating-point image"}
_RGB_LIKE = {"YCbCr", "LAB", "HSV"}  # three channels that would be taken as R, G, B


def image_mode_problem(mode: str) -> tuple[str | None, str | None]:
    """(problem, conversion) for a picture of PIL ``mode``, as :func:`read_rgb_file` treats it.

    The conversion is the mode of an image the reader makes RGB (by dropping
    its 4th channel). The mode, not the array, decides: a CMYK JPEG decodes
    to 4 channels that would otherwise pass for RGB plus alpha.

    >>> image_mode_problem("CMYK")[0]
    'CMYK colours would be read as RGB; save it as 8-bit RGB'
    >>> image_mode_problem("RGBA")
    (None, 'RGBA')
    """
    if mode == "RGB":
        return None, None
    if mode in ("RGBA", "RGBa", "RGBX"):
        return None, mode
    if mode in _SINGLE or mode.startswith("I;"):
        what = _SINGLE.get(mode, "a single-channel 16-bit image")
        return f"{what} (mode {mode}); extract reads RGB (height, width, 3) only: save it as 8-bit RGB", None
    if mode in ("LA", "La", "PA"):
        return (f"grayscale with alpha (mode {mode}), 2 channels; extract reads RGB (height, width, 3) only: "
                "save it as 8-bit RGB"), None
    if mode == "CMYK" or mode in _RGB_LIKE:
        return f"{mode} colours would be read as RGB; save it as 8-bit RGB", None
    return f"image mode {mode} is not RGB; save it as 8-bit RGB", None


def read_rgb_file(path: Path) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB: the one reader of pictures for every command.

    PIL pictures are refused by their mode first (grayscale, palette, CMYK,
    ...: :func:`image_mode_problem`), then their pixels are checked by
    :func:`~embedcache.datasets.base.to_uint8_rgb` (an opaque alpha channel is
    dropped, a transparent one refused). ``.npy`` arrays go straight to the
    pixel check.

    Raises
    ------
    DataError
        One line naming the file and what to do.
    """
    path = Path(path)
    if path.suffix != ".npy":
        try:
            with Image.open(path) as im:
                mode = im.mode
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: cannot read image ({exc})") from None
        problem, _ = image_mode_problem(mode)
        if problem:
            raise DataError(f"{path}: {problem}")
    return to_uint8_rgb(read_image_file(path), str(path))



def image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image file from its header."""
    try:
        with Image.open(path) as im:
            w, h = im.size
    except OSError as exc:
        raise DataError(f"{path}: cannot read image ({exc})") from None
    return h, w


def default_overlap(tile_size: int, overlap: int | None) -> int:
    """``overlap``, or a quarter of the tile when None (what live prediction uses)."""
    return tile_size // OVERLAP_DIVISOR if overlap is None else int(overlap)


class ImageSetDataset(TileDataset):
    """Base of the readers of whole images: subclasses call :meth:`_tile_images` and give
    :meth:`_load_label`; ``_files`` are the image files."""

    overlap: int = 0
    _files: list[Path]

    source_mpp: list | None = None  # microns per pixel of each image as read (None: unknown)
    mpp_sources: list | None = None  # where each came from (resolution.image_mpps)
    working_mpp: float | None = None  # the resolution images were resampled to before tiling

    def _tile_images(self, files: list[Path], names: list[str], tile_size: int, overlap: int,
                     sizes: list[tuple[int, int]] | None = None) -> None:
        if tile_size < 32:
            raise DataError(f"tile size {tile_size} is too small; use at least 32 px")
        if not 0 <= overlap <= tile_size // 2:
            raise DataError(f"overlap {overlap} px: use 0..{tile_size // 2} px for {tile_size}-px tiles")
        self._files, self.overlap = list(files), int(overlap)
        self.tile_shape = (tile_size, tile_size)
        self._sizes = [tuple(sizes[k]) if sizes is not None else image_size(f) for k, f in enumerate(self._files)]
        self._names = list(names)
        self._scale = [1.0] * len(self._files)
        self._plan_tiles()

    def _plan_tiles(self) -> None:
        tile_size = self.tile_shape[0]
        source, offset, valid = [], [], []
        for k in range(len(self._files)):
            h, w = self.source_shape(k)
            for r, c in plan_tiles((h, w), self.tile_shape, self.overlap):
                source.append(k)
                offset.append((r, c))
                valid.append((min(tile_size, h - r), min(tile_size, w - c)))
        self.tiles = TileIndex(
            source=np.asarray(source, dtype=np.int64),
            offset=np.asarray(offset, dtype=np.int64).reshape(-1, 2),
            valid=np.asarray(valid, dtype=np.int64).reshape(-1, 2),
            source_names=list(self._names),
        )
        self._image = lru_cache(maxsize=2)(self._scaled_image)
        self._label = lru_cache(maxsize=2)(self._scaled_label)

    def set_resolution(self, mpp: float | None = None, working_mpp: float | None = None) -> None:
        """Find each image's microns per pixel (:func:`~embedcache.datasets.resolution.image_mpps`) and, with
        ``working_mpp``, resample every image to it before tiling.

        Without ``working_mpp`` nothing is resampled; the dataset's ``mpp``
        becomes the images' common resolution when they share one.

        Raises
        ------
        DataError
            ``working_mpp`` with an image of unknown resolution (named), or a bad ``mpp.csv``.
        """
        from embedcache.datasets.resolution import image_mpps

        folder = self.path if Path(self.path).is_dir() else Path(self.path).parent
        self.source_mpp, self.mpp_sources = image_mpps(self._files, self._names, folder, mpp, self.mpp)
        if working_mpp is None:
            known = {m for m in self.source_mpp if m is not None}
            if len(known) == 1 and None not in self.source_mpp:
                self.mpp = known.pop()
            elif known:  # mixed: the tiles have no one resolution
                self.mpp = None
            return
        unknown = [n for n, m in zip(self._names, self.source_mpp) if m is None]
        if unknown:
            raise DataError(f"{self.path}: {len(unknown)} image(s) of unknown resolution (first: {unknown[0]}) "
                            f"cannot be resampled to {working_mpp:g} um/px; give their microns per pixel in "
                            "mpp.csv (image,mpp) beside them, or --mpp for the whole folder")
        self.working_mpp = float(working_mpp)
        self._scale = [m / self.working_mpp for m in self.source_mpp]
        self.mpp = self.working_mpp
        self._plan_tiles()

    def source_shape(self, k: int) -> tuple[int, int]:
        """(height, width) of image ``k`` as tiled: at the working resolution when there is one."""
        from embedcache.datasets.resolution import scaled_shape

        return scaled_shape(self._sizes[k], self._scale[k])

    def original_shape(self, k: int) -> tuple[int, int]:
        """(height, width) of image ``k`` in its own file's pixels."""
        return tuple(self._sizes[k])

    def _scaled_image(self, k: int) -> np.ndarray:
        from embedcache.datasets.resolution import resize_image

        return resize_image(self._load_image(k), self.source_shape(k))

    def _scaled_label(self, k: int) -> np.ndarray:
        from embedcache.datasets.resolution import resize_labels

        return resize_labels(self._load_label(k), self.source_shape(k))

    def _load_image(self, k: int) -> np.ndarray:
        return read_rgb_file(self._files[k])

    def _load_label(self, k: int) -> np.ndarray:  # pragma: no cover - abstract
        """Instance and type maps of image ``k``, ``(H, W, 2) int32``, of the image's size."""
        raise NotImplementedError

    def source_image(self, k: int) -> np.ndarray:
        """Source image ``k`` whole, ``(H, W, 3) ndarray of uint8``."""
        return self._image(k)

    def source_labels(self, k: int) -> np.ndarray:
        """Instance and type maps of source image ``k`` whole, ``(H, W, 2) ndarray of int32``."""
        if not self.has_labels:
            raise DataError(f"{self.path}: this dataset has no labels")
        return self._label(k)

    def _cut(self, full: np.ndarray, i: int, fill) -> np.ndarray:
        (r, c), (h, w) = self.tiles.offset[i], self.tiles.valid[i]
        tile = np.full((*self.tile_shape, full.shape[-1]), fill, dtype=full.dtype)
        tile[:h, :w] = full[r:r + h, c:c + w]
        return tile

    def _read_images(self, idx):
        return np.stack([self._cut(self._image(int(self.tiles.source[i])), i, PAD_VALUE) for i in idx])

    def _read_labels(self, idx):
        return np.stack([self._cut(self._label(int(self.tiles.source[i])), i, 0) for i in idx])

    def fingerprint(self) -> str:
        base = super().fingerprint()
        if self.working_mpp is not None:  # resampled images are other tiles
            scales = ",".join(f"{s:.6g}" for s in self._scale)
            base = hashlib.sha256(f"{base}:working_mpp={self.working_mpp:g}:{scales}".encode()).hexdigest()
        if not self.overlap:  # stores made before tiles could overlap keep their fingerprint
            return base
        return hashlib.sha256(f"{base}:overlap={self.overlap}".encode()).hexdigest()

    def describe(self) -> dict:
        out = {**super().describe(), "overlap": self.overlap}
        if self.source_mpp is not None and any(m is not None for m in self.source_mpp):
            out["source_mpp"] = list(self.source_mpp)
            out["mpp_sources"] = list(self.mpp_sources)
        if self.working_mpp is not None:
            out["working_mpp"] = self.working_mpp
            out["source_shapes"] = [list(s) for s in self._sizes]
        return out
