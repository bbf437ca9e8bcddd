"""How ``extract`` reads a dataset and runs an encoder over it."""

from __future__ import annotations

from dataclasses import dataclass

from embedcache.config.base import _at_least, _Config
from embedcache.device import check_device
from embedcache.errors import ConfigError


@dataclass(frozen=True)
class ExtractConfig(_Config):
    """How ``extract`` runs an encoder over a dataset.

    Attributes
    ----------
    encoder : str
        Registry name or ``timm:<architecture>``.
    weights : str or None
        Local checkpoint, ``random``, or None for the registry's source.
    layers : str
        ``default``, ``all``, or comma-separated layer names/indices.
    variants : str
        ``none``, ``flips``, ``d4``, ``d4+stain`` or comma-separated names.
    batch_size : int
        Images (tile-variants) per forward pass.
    device : {"auto", "cpu", "cuda"}
    dtype : {"float16", "float32", "int8"}
        Storage type of tokens (pooled vectors are always float32). int8
        keeps a float32 scale per tile, variant and channel beside the
        tokens (:mod:`embedcache.store.quant`); readers get floats.
    codec : {"lz4", "zstd"}
        Compressor of the store's chunks: ``lz4`` writes several GB/s per
        core, ``zstd`` ~0.8 GB/s for ~10% fewer bytes
        (:func:`embedcache.store.schema.compressors`).
    norm : bool
        Apply the encoder's final norm to every tapped layer.
    unit_tiles : int
        Tiles per unit of work (and per shard).
    loader_workers : int
        DataLoader worker processes reading tiles (single-process runs).
    tile_size : int
        Tile side for the folder and slides layouts (slides: pixels at ``tile_mpp``).
    overlap : int or None
        Overlap of neighbouring tiles of an image in px. Folder layout, None:
        a quarter of the tile, as live prediction cuts images (no seams).
        Slides, None: 0 (a plain grid); the overlap of ``predict --slides``
        (a quarter tile) makes a store it can read instead of the encoder.
    format : str
        ``auto`` or a registered dataset layout (``embedcache datasets``).
    seed : int
        Seed of random initialisation with ``weights="random"``.
    mpp : float or None
        Slides: level-0 microns per pixel, overriding what the files record
        (needed for slides that record none). Whole images: the resolution
        of those that record none and are not in ``mpp.csv``.
    tile_mpp : float
        Slides: microns per pixel of the tiles.
    min_tissue : float
        Slides: smallest tissue fraction (0..1) of a kept tile.
    magnification : {"20x", "40x"} or None
        Releases with both, read at the archive's root (CytoDArk0): which one
        (None: the reader's default, 20x).
    classes : str or None
        Releases with several class sets (CoNSeP: ``hovernet``, the default,
        or ``consep``): which one.
    working_mpp : float or None
        Whole images: microns per pixel every image is resampled to before
        tiling (:mod:`embedcache.datasets.resolution`); None: as they are.
    """

    encoder: str = "efficientnet_lite0"
    weights: str | None = None
    layers: str = "default"
    variants: str = "d4"
    batch_size: int = 32
    device: str = "auto"
    dtype: str = "float16"
    codec: str = "lz4"
    norm: bool = False
    unit_tiles: int = 16
    loader_workers: int = 1
    tile_size: int = 256
    overlap: int | None = None
    format: str = "auto"
    seed: int = 0
    mpp: float | None = None
    tile_mpp: float = 0.5
    min_tissue: float = 0.5
    magnification: str | None = None
    classes: str | None = None
    working_mpp: float | None = None

    def __post_init__(self):
        if self.working_mpp is not None and not self.working_mpp > 0:
            raise ConfigError(f"working_mpp must be positive, got {self.working_mpp}")
        if self.mpp is not None and not self.mpp > 0:
            raise ConfigError(f"mpp must be positive, got {self.mpp}")
        if not self.tile_mpp > 0:
            raise ConfigError(f"tile_mpp must be positive, got {self.tile_mpp}")
        if not 0 <= self.min_tissue <= 1:
            raise ConfigError(f"min_tissue must lie in 0..1, got {self.min_tissue}")
        _at_least(self, 1, "batch_size", "unit_tiles")
        if self.overlap is not None and not 0 <= self.overlap <= self.tile_size // 2:
            raise ConfigError(f"overlap must lie in 0..{self.tile_size // 2} px for {self.tile_size}-px tiles, "
                              f"got {self.overlap}")
        if self.loader_workers < 0:
            raise ConfigError(f"loader_workers must be >= 0, got {self.loader_workers}")
        if self.dtype not in ("float16", "float32", "int8"):
            raise ConfigError(f"dtype must be float16, float32 or int8, got {self.dtype!r}")
        if self.codec not in ("lz4", "zstd"):
            raise ConfigError(f"codec must be lz4 or zstd, got {self.codec!r}")
        check_device(self.device)
        if self.magnification is not None and self.magnification not in ("20x", "40x"):
            raise ConfigError(f"magnification must be 20x or 40x, got {self.magnification!r}")

    def dataset_options(self) -> dict:
        """Keyword arguments of :func:`embedcache.datasets.open_dataset` besides the format."""
        return {"tile_size": self.tile_size, "mpp": self.mpp, "tile_mpp": self.tile_mpp,
                "min_tissue": self.min_tissue, "overlap": self.overlap,
                **{k: v for k, v in (("magnification", self.magnification), ("classes", self.classes),
                                     ("working_mpp", self.working_mpp)) if v}}

    def to_dict(self) -> dict:
        # The release options are recorded only when set, so stores and pipeline steps made before they
        # existed keep their records and content keys.
        d = super().to_dict()
        for key in ("magnification", "classes", "working_mpp"):
            if d.get(key) is None:
                d.pop(key, None)
        return d


# (d_row, d_col) of each channel. Lengths do not matter: every side of every
# nucleus is normalised to 1.
