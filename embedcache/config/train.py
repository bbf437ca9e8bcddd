"""How the nuclei decoder is built, trained, and its maps turned into nuclei."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from embedcache.config.base import _at_least, _Config
from embedcache.device import check_device
from embedcache.errors import ConfigError

DIRECTIONS = {
    "cisca": ((0, 1), (1, 0), (1, 1), (1, -1)),
    "hovernet": ((0, 1), (1, 0)),
}


@dataclass(frozen=True)
class TargetConfig(_Config):
    """How label maps become training targets.

    Attributes
    ----------
    distance : {"cisca", "hovernet"}
        Four directional maps (horizontal, vertical, two diagonals) or
        HoVer-Net's horizontal and vertical pair.
    boundary_width : int
        Pixels of each touching nucleus marked as boundary (1 at 20x and 40x).
    """

    distance: str = "cisca"
    boundary_width: int = 1

    def __post_init__(self):
        if self.distance not in DIRECTIONS:
            raise ConfigError(f"distance maps must be one of {', '.join(DIRECTIONS)}, not {self.distance!r}")
        if not 0 <= self.boundary_width <= 8:
            raise ConfigError(f"boundary_width must lie in 0..8 pixels, got {self.boundary_width}")

    @property
    def directions(self) -> tuple[tuple[int, int], ...]:
        return DIRECTIONS[self.distance]


@dataclass(frozen=True)
class DecoderConfig(_Config):
    """Width and depth of the decoder.

    Attributes
    ----------
    width : int
        Channels at stride 4 (module docstring for the other strides).
    depth : int
        Conv blocks per level of the U-Net path.
    image_branch : bool
        Add the branch over the tile's pixels (module docstring).
    """

    width: int = 32
    depth: int = 2
    image_branch: bool = True

    def __post_init__(self):
        if not 8 <= self.width <= 1024:
            raise ConfigError(f"decoder width must lie in 8..1024, got {self.width}")
        if not 1 <= self.depth <= 8:
            raise ConfigError(f"decoder depth must lie in 1..8, got {self.depth}")

    def channels(self, stride: float) -> int:
        return int(min(4 * self.width, max(self.width // 2, round(self.width * stride / 4))))


@dataclass(frozen=True)
class LossConfig(_Config):
    """Weights and shapes of the loss terms.

    ``cls3``: cross-entropy + Dice; ``types``: class-weighted cross-entropy +
    Tversky (``alpha`` weighs false positives, ``beta`` false negatives);
    ``dist``: masked MSE (or MAE) on nucleus pixels + the gradient loss
    (MSE of the maps' derivatives along each channel's direction).
    """

    cls3: float = 1.0
    types: float = 1.0
    dist: float = 1.0
    gradient: float = 1.0
    distance_error: str = "mse"
    tversky_alpha: float = 0.3
    tversky_beta: float = 0.7

    def __post_init__(self):
        if self.distance_error not in ("mse", "mae"):
            raise ConfigError(f"distance_error must be mse or mae, not {self.distance_error!r}")
        if min(self.cls3, self.types, self.dist, self.gradient) < 0:
            raise ConfigError("loss weights must be >= 0")


@dataclass(frozen=True)
class FitConfig(_Config):
    """How ``fit-decoder`` trains.

    The defaults (60 epochs, lr 2e-3, patience 20, a decoder of depth 2) were
    chosen by ablation on real H&E (``benchmarks/cpm15_ablation.py``): each
    beat the earlier 30 epochs, lr 1e-3, depth 1 on images kept apart from
    training and testing; colour jitter, a heavier gradient loss, an MAE
    distance error and width 64 gained too little for their cost to be
    defaults, and stay options.

    Attributes
    ----------
    epochs : int
        Most epochs (each shows every training tile once, in one variant).
    batch_size : int
    lr, weight_decay : float
        AdamW.
    warmup_epochs : float
        Linear warm-up, then cosine decay to ``lr * 0.01`` at ``epochs``.
    patience : int
        Stop after this many epochs without a better ``monitor`` (0: never).
    monitor : {"loss", "pq"}
        Validation loss (lower is better) or validation PQ (higher is
        better; needs a scorer, which ``fit-decoder`` provides).
    seed : int
    val, train : str
        Split specs (:func:`embedcache.train.stream.make_split`).
    split_seed : int or None
        Seed of a drawn split (``frac:F``, or ``auto`` without folds); None:
        ``seed``. Fixing it trains several seeds on the same held-out tiles.
    variants : str
        ``all`` cached variants, or comma-separated names to draw from.
    order : {"units", "random"}
        Reading order of training tiles.
    colour : float
        Strength of the HED colour jitter of the tiles the image branch sees
        in training (:mod:`embedcache.train.augment`; 0: none).
    loader_workers : int
        DataLoader worker processes reading the store.
    preload : {"auto", "yes", "no"}
        Read features into RAM first (``auto``: when they take under a
        quarter of the available memory).
    device : str
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    decoder, targets, loss : DecoderConfig, TargetConfig, LossConfig
    """

    epochs: int = 60
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    patience: int = 20
    monitor: str = "loss"
    seed: int = 0
    val: str = "auto"
    train: str = "rest"
    split_seed: int | None = None
    variants: str = "all"
    order: str = "units"
    colour: float = 0.0
    loader_workers: int = 1
    preload: str = "auto"
    device: str = "auto"
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    targets: TargetConfig = field(default_factory=TargetConfig)
    loss: LossConfig = field(default_factory=LossConfig)

    def __post_init__(self):
        _at_least(self, 1, "epochs", "batch_size")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"learning rate must be a positive number, got {self.lr}")
        if self.patience < 0 or self.loader_workers < 0 or self.warmup_epochs < 0 or self.weight_decay < 0:
            raise ConfigError("patience, loader_workers, warmup_epochs and weight_decay must be >= 0")
        check_device(self.device)
        if self.monitor not in ("loss", "pq"):
            raise ConfigError(f"monitor must be loss or pq, not {self.monitor!r}")
        if self.preload not in ("auto", "yes", "no"):
            raise ConfigError(f"preload must be auto, yes or no, not {self.preload!r}")
        if not 0 <= self.colour <= 0.5:
            raise ConfigError(f"colour jitter strength must lie in 0..0.5, got {self.colour}")
        if self.order not in ("units", "random"):
            raise ConfigError(f"order must be units or random, not {self.order!r}")


@dataclass(frozen=True)
class PostprocessConfig(_Config):
    """Parameters of :func:`instances_from_maps` (module docstring); defaults suit 40x.

    Attributes
    ----------
    foreground : float
        Threshold on P(body) + P(boundary).
    marker : float
        Threshold on P(body) - P(boundary) for marker pixels.
    edge : float
        Marker pixels must have a distance-map edge value below this.
    edge_weight : float
        Weight of the edge map in the watershed energy.
    marker_radius : int
        Radius of the disk that opens the markers.
    marker_min_size, min_size, hole_area : int
        Pixels: smallest marker, smallest nucleus, largest hole filled.
    """

    foreground: float = 0.5
    marker: float = 0.4
    edge: float = 0.4
    edge_weight: float = 1.0
    marker_radius: int = 1
    marker_min_size: int = 8
    min_size: int = 16
    hole_area: int = 32

    def __post_init__(self):
        for name in ("foreground", "edge"):
            if not 0 < getattr(self, name) < 1:
                raise ConfigError(f"postprocess {name} threshold must lie strictly between 0 and 1")
        if not -1 < self.marker < 1:
            raise ConfigError("postprocess marker threshold must lie strictly between -1 and 1")
        if min(self.marker_radius, self.marker_min_size, self.min_size, self.hole_area) < 0 or self.edge_weight < 0:
            raise ConfigError("postprocess sizes and weights must be >= 0")

    @classmethod
    def for_magnification(cls, magnification: str = "40x", **overrides) -> "PostprocessConfig":
        """Defaults for ``"40x"`` or ``"20x"`` (sizes scale with the square of the resolution)."""
        presets = {
            "40x": {},
            "20x": {"marker_radius": 0, "marker_min_size": 3, "min_size": 5, "hole_area": 8},
        }
        if magnification not in presets:
            raise ConfigError(f"magnification must be 40x or 20x, not {magnification!r}")
        return cls(**{**presets[magnification], **overrides})

    @classmethod
    def for_mpp(cls, mpp: float, **overrides) -> "PostprocessConfig":
        """Defaults for maps at ``mpp`` microns per pixel: the nucleus sizes in microns, in pixels at ``mpp``.

        0.25 and 0.5 um/px give the 40x and 20x defaults exactly; between and
        beyond, the 40x sizes are scaled (areas with the square of the
        resolution, the marker radius linearly).

        >>> PostprocessConfig.for_mpp(0.5) == PostprocessConfig.for_magnification("20x")
        True
        >>> PostprocessConfig.for_mpp(0.125).min_size
        64
        """
        for anchor, magnification in ((0.25, "40x"), (0.5, "20x")):
            if abs(mpp / anchor - 1) < 0.05:
                return cls.for_magnification(magnification, **overrides)
        base, linear, area = cls(), 0.25 / mpp, (0.25 / mpp) ** 2
        sizes = {"marker_radius": int(round(base.marker_radius * linear)),
                 "marker_min_size": max(1, int(round(base.marker_min_size * area))),
                 "min_size": max(1, int(round(base.min_size * area))),
                 "hole_area": max(1, int(round(base.hole_area * area)))}
        return cls(**{**sizes, **overrides})


