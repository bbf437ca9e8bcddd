"""Reader for a folder of image files with per-file label maps.

Layout: ``NAME.png`` (RGB; also .tif/.tiff/.jpg/.jpeg), ``NAME_inst.png``
(instance ids, 0 = background; 16-bit PNG, TIFF or ``.npy``) and optionally
``NAME_type.png`` (type ids). Images may have any size: each one is cut into
``tile_size`` tiles from its top-left corner, neighbours overlapping by
``overlap`` px (:func:`embedcache.geometry.plan_tiles`, as live prediction
cuts images, so a store's tiles are the ones live prediction would see and
cached prediction stitches them without seams). Tiles that run past the
image's right or bottom edge are padded: pixels with white (255, the colour
of empty glass in H&E) and labels with 0; the covered part is recorded per
tile as ``valid`` (height, width) so later stages can ignore the padding.
Nothing is resized.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from embedcache.datasets.base import TileDataset, TileIndex, check_label_map, to_uint8_rgb
from embedcache.errors import DataError
from embedcache.geometry import plan_tiles

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
LABEL_SUFFIXES = (".png", ".tif", ".tiff", ".npy")
PAD_VALUE = 255


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


def read_image_file(path: Path) -> np.ndarray:
    """An image file as an array (PIL for pictures, numpy for ``.npy``)."""
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False)
        with Image.open(path) as im:
            return np.asarray(im)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read image ({exc})") from None


def find_label_file(folder: Path, stem: str, kind: str) -> Path | None:
    """``folder/stem_kind.<suffix>`` for the first label suffix that exists."""
    for suffix in LABEL_SUFFIXES:
        p = folder / f"{stem}_{kind}{suffix}"
        if p.exists():
            return p
    return None


def list_images(folder: Path) -> list[Path]:
    """Image files of a folder layout, label maps excluded, sorted by name."""
    return sorted(
        p for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.stem.endswith(("_inst", "_type", "_overlay"))
    )


class FolderDataset(TileDataset):
    layout = "folder"

    def __init__(self, path, tile_size: int = 256, overlap: int = 0):
        self.path = Path(path)
        if not self.path.is_dir():
            raise DataError(f"{self.path}: not a folder")
        if tile_size < 32:
            raise DataError(f"tile size {tile_size} is too small; use at least 32 px")
        if not 0 <= overlap <= tile_size // 2:
            raise DataError(f"overlap {overlap} px: use 0..{tile_size // 2} px for {tile_size}-px tiles")
        self.overlap = int(overlap)
        self._files = list_images(self.path)
        if not self._files:
            raise DataError(f"{self.path}: no images found ({', '.join(IMAGE_SUFFIXES)})")
        self._inst = [find_label_file(self.path, f.stem, "inst") for f in self._files]
        self._type = [find_label_file(self.path, f.stem, "type") for f in self._files]
        with_labels = sum(p is not None for p in self._inst)
        if 0 < with_labels < len(self._files):
            missing = next(f.name for f, p in zip(self._files, self._inst) if p is None)
            raise DataError(f"{self.path}: {missing} has no _inst label map while other images do; "
                            "give every image its NAME_inst.png or none")
        self.has_labels = with_labels > 0
        self.tile_shape = (tile_size, tile_size)
        source, offset, valid = [], [], []
        for k, f in enumerate(self._files):
            try:
                with Image.open(f) as im:
                    w, h = im.size
            except OSError as exc:
                raise DataError(f"{f}: cannot read image ({exc})") from None
            for r, c in plan_tiles((h, w), self.tile_shape, self.overlap):
                source.append(k)
                offset.append((r, c))
                valid.append((min(tile_size, h - r), min(tile_size, w - c)))
        self.tiles = TileIndex(
            source=np.asarray(source, dtype=np.int64),
            offset=np.asarray(offset, dtype=np.int64).reshape(-1, 2),
            valid=np.asarray(valid, dtype=np.int64).reshape(-1, 2),
            source_names=[f.stem for f in self._files],
        )
        self.class_names = None
        self._image = lru_cache(maxsize=2)(self._load_image)
        self._label = lru_cache(maxsize=2)(self._load_label)

    def _load_image(self, k: int) -> np.ndarray:
        return read_rgb_file(self._files[k])

    def _load_label(self, k: int) -> np.ndarray:
        image_hw = self._image(k).shape[:2]
        inst = check_label_map(read_image_file(self._inst[k]), str(self._inst[k]))
        maps = [inst]
        if self._type[k] is not None:
            maps.append(check_label_map(read_image_file(self._type[k]), str(self._type[k])))
        else:
            maps.append(np.zeros_like(inst))
        for m, p in zip(maps, (self._inst[k], self._type[k])):
            if m.ndim != 2 or m.shape != image_hw:
                raise DataError(f"{p}: label map of shape {m.shape} does not match its image {image_hw}")
        return np.stack(maps, axis=-1)

    def _cut(self, full: np.ndarray, i: int, fill) -> np.ndarray:
        (r, c), (h, w) = self.tiles.offset[i], self.tiles.valid[i]
        tile = np.full((*self.tile_shape, full.shape[-1]), fill, dtype=full.dtype)
        tile[:h, :w] = full[r:r + h, c:c + w]
        return tile

    def _read_images(self, idx):
        return np.stack([self._cut(self._image(int(self.tiles.source[i])), i, PAD_VALUE) for i in idx])

    def _read_labels(self, idx):
        return np.stack([self._cut(self._label(int(self.tiles.source[i])), i, 0) for i in idx])

    def _source_files(self):
        return [p for group in (self._files, self._inst, self._type) for p in group if p is not None]

    def _files_of_source(self):
        return [[p for p in files if p is not None] for files in zip(self._files, self._inst, self._type)]

    def fingerprint(self) -> str:
        base = super().fingerprint()
        if not self.overlap:  # stores made before tiles could overlap keep their fingerprint
            return base
        import hashlib

        return hashlib.sha256(f"{base}:overlap={self.overlap}".encode()).hexdigest()

    def describe(self) -> dict:
        return {**super().describe(), "overlap": self.overlap}
