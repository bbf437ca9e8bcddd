"""Settings of each step as frozen dataclasses, validated at construction.

Pipeline files and CLI options map one-to-one onto these fields.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from embedcache.errors import ConfigError


class _Config:
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} field {unknown[0]!r}; known: {', '.join(sorted(known))}")
        return cls(**d)


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
    dtype : {"float16", "float32"}
        Storage type of tokens (pooled vectors are always float32).
    norm : bool
        Apply the encoder's final norm to every tapped layer.
    unit_tiles : int
        Tiles per unit of work (and per shard).
    num_workers : int
        DataLoader workers reading tiles.
    tile_size : int
        Tile side for the folder layout.
    format : {"auto", "pannuke", "conic", "folder"}
    seed : int
        Seed of random initialisation with ``weights="random"``.
    """

    encoder: str = "efficientnet_lite0"
    weights: str | None = None
    layers: str = "default"
    variants: str = "d4"
    batch_size: int = 32
    device: str = "auto"
    dtype: str = "float16"
    norm: bool = False
    unit_tiles: int = 16
    num_workers: int = 1
    tile_size: int = 256
    format: str = "auto"
    seed: int = 0

    def __post_init__(self):
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, got {self.batch_size}")
        if self.unit_tiles < 1:
            raise ConfigError(f"unit_tiles must be at least 1, got {self.unit_tiles}")
        if self.num_workers < 0:
            raise ConfigError(f"num_workers must be >= 0, got {self.num_workers}")
        if self.dtype not in ("float16", "float32"):
            raise ConfigError(f"dtype must be float16 or float32, got {self.dtype!r}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"device must be auto, cpu or cuda[:N], got {self.device!r}")
