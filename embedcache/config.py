"""Settings of every step as frozen dataclasses, validated at construction; no torch needed.

Pipeline files and CLI options map one-to-one onto these fields:
:class:`ExtractConfig` (``extract``), :class:`FitConfig` with its nested
:class:`DecoderConfig`, :class:`TargetConfig` and :class:`LossConfig`
(``fit-decoder``), :class:`PostprocessConfig` (maps to nuclei),
:class:`ProbeConfig` (``probe``), :class:`SSLConfig` (``fit-ssl``) and
:class:`RetrievalConfig` (``retrieval``). Each has ``to_dict`` and
``from_dict`` (unknown fields refused, nested configs read from mappings).

>>> FitConfig.from_dict({"epochs": 3, "decoder": {"width": 16}}).decoder.width
16
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from embedcache.device import check_device
from embedcache.errors import ConfigError


def _at_least(config, minimum: int, *names: str) -> None:
    for name in names:
        if getattr(config, name) < minimum:
            raise ConfigError(f"{name.replace('batch_size', 'batch size')} must be at least {minimum}, "
                              f"got {getattr(config, name)}")


class _Config:
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} field {unknown[0]!r}; known: {', '.join(sorted(known))}")
        d = dict(d)
        for name, f in known.items():
            sub = f.default_factory
            if isinstance(d.get(name), dict) and isinstance(sub, type) and issubclass(sub, _Config):
                d[name] = sub.from_dict(d[name])
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
    loader_workers : int
        DataLoader worker processes reading tiles (single-process runs).
    tile_size : int
        Tile side for the folder and slides layouts (slides: pixels at ``tile_mpp``).
    overlap : int or None
        Folder layout: overlap of neighbouring tiles of an image in px, as
        live prediction cuts images (no seams); None: a quarter of the tile.
    format : {"auto", "pannuke", "conic", "folder", "slides"}
    seed : int
        Seed of random initialisation with ``weights="random"``.
    mpp : float or None
        Slides: level-0 microns per pixel, overriding what the files record
        (needed for slides that record none).
    tile_mpp : float
        Slides: microns per pixel of the tiles.
    min_tissue : float
        Slides: smallest tissue fraction (0..1) of a kept tile.
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
    loader_workers: int = 1
    tile_size: int = 256
    overlap: int | None = None
    format: str = "auto"
    seed: int = 0
    mpp: float | None = None
    tile_mpp: float = 0.5
    min_tissue: float = 0.5

    def __post_init__(self):
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
        if self.dtype not in ("float16", "float32"):
            raise ConfigError(f"dtype must be float16 or float32, got {self.dtype!r}")
        check_device(self.device)

    def dataset_options(self) -> dict:
        """Keyword arguments of :func:`embedcache.datasets.open_dataset` besides the format."""
        return {"tile_size": self.tile_size, "mpp": self.mpp, "tile_mpp": self.tile_mpp,
                "min_tissue": self.min_tissue, "overlap": self.overlap}


# (d_row, d_col) of each channel. Lengths do not matter: every side of every
# nucleus is normalised to 1.
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
    depth: int = 1
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
    loader_workers : int
        DataLoader worker processes reading the store.
    preload : {"auto", "yes", "no"}
        Read features into RAM first (``auto``: when they take under a
        quarter of the available memory).
    device : str
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    decoder, targets, loss : DecoderConfig, TargetConfig, LossConfig
    """

    epochs: int = 30
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    patience: int = 10
    monitor: str = "loss"
    seed: int = 0
    val: str = "auto"
    train: str = "rest"
    split_seed: int | None = None
    variants: str = "all"
    order: str = "units"
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


FAR_FROM = ("both", "same", "other")


def _check_pair_distances(d_near: float, d_far: float, far_from: str):
    if not d_near > 0:
        raise ConfigError(f"d_near must be positive (micrometres), got {d_near}")
    if not d_far >= d_near:
        raise ConfigError(f"d_far ({d_far} um) must be at least d_near ({d_near} um)")
    if far_from not in FAR_FROM:
        raise ConfigError(f"far_from must be one of {', '.join(FAR_FROM)}, not {far_from!r}")


@dataclass(frozen=True)
class SSLConfig(_Config):
    """How ``fit-ssl`` learns descriptors from the spatial continuity of slides.

    Near pairs (centres closer than ``d_near`` um on one slide) are pulled
    together, far pairs (``d_far`` um or more apart on one slide, or on two
    slides) pushed apart by ``L = (1 - y) d^2 + y max(0, margin - d)^2`` on
    unit descriptors (y = 1 far). Defaults suit 256-px tiles at 0.5 um/px:
    near pairs are a tile's 8 neighbours, far pairs 2 mm or more apart on
    the same slide. Far pairs across slides are off by default: they teach
    the descriptors to tell slides apart (staining), and on the synthetic
    slides such heads retrieved across slides worse than the untrained one.

    Attributes
    ----------
    mode : {"head", "encoder"}
        ``head``: an MLP on a store's pooled vectors, descriptors written
        back into the store; ``encoder``: a siamese timm CNN on slide tiles,
        saved as a checkpoint the encoder registry loads.
    layer : str
        Head: store layer (name, index or ``last``) the head reads.
    kind : {"mean", "cls"}
        Head: which pooled vector.
    name : str
        Head: name of the descriptor layer written back (``pooled/<name>/mean``).
    dim : int
        Descriptor size.
    hidden : int
        Head: hidden width of the MLP.
    margin : float
        Contrastive margin (descriptors are unit vectors: distances lie in 0..2,
        unrelated ones near sqrt 2).
    d_near, d_far : float
        Pair distances in micrometres (tile centre to centre).
    far_from : {"both", "same", "other"}
        Far pairs from the same slide, from other slides, or both.
    pairs : int
        Head: pairs per epoch (half near, half far).
    epochs : int
        Head: passes, each over freshly drawn pairs.
    steps : int
        Encoder: optimisation steps.
    batch_size : int or None
        Pairs per step; None: 256 (head), 8 (encoder).
    lr : float or None
        Adam learning rate; None: 1e-3 (head), 1e-4 (encoder).
    holdout : float
        Fraction of slides kept out of training (retrieval's queries).
    augment : bool
        Head: each side of a pair reads a random cached variant.
    encoder : str
        Encoder: architecture (``timm:resnet50``).
    weights : str or None
        Encoder: starting weights (file, ``random``, None for the registry's).
    stain_norm : bool
        Encoder: Reinhard normalisation of tiles in LAB space.
    device : str
    seed : int
        Seeds pair sampling, initialisation and batches.
    """

    mode: str = "head"
    layer: str = "last"
    kind: str = "mean"
    name: str = "ssl"
    dim: int = 128
    hidden: int = 512
    margin: float = 0.5
    d_near: float = 200.0
    d_far: float = 2000.0
    far_from: str = "same"
    pairs: int = 4096
    epochs: int = 20
    steps: int = 200
    batch_size: int | None = None
    lr: float | None = None
    holdout: float = 0.25
    augment: bool = True
    encoder: str = "timm:resnet50"
    weights: str | None = None
    stain_norm: bool = False
    device: str = "auto"
    seed: int = 0

    def __post_init__(self):
        if self.mode not in ("head", "encoder"):
            raise ConfigError(f"mode must be head or encoder, not {self.mode!r}")
        if self.kind not in ("mean", "cls"):
            raise ConfigError(f"kind must be mean or cls, not {self.kind!r}")
        _check_pair_distances(self.d_near, self.d_far, self.far_from)
        _at_least(self, 1, "dim", "hidden", "pairs", "steps")
        if self.epochs < 0:
            raise ConfigError(f"epochs must be >= 0, got {self.epochs}")
        if self.batch_size is not None and self.batch_size < 2:
            raise ConfigError(f"batch_size must be at least 2, got {self.batch_size}")
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if not self.margin > 0:
            raise ConfigError(f"margin must be positive, got {self.margin}")
        if not 0 <= self.holdout < 1:
            raise ConfigError(f"holdout must lie in 0..1 (exclusive of 1), got {self.holdout}")
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ConfigError(f"descriptor layer name {self.name!r} must be non-empty, without '/' or a leading '.'")

    @property
    def batch(self) -> int:
        return self.batch_size or (256 if self.mode == "head" else 8)

    @property
    def learning_rate(self) -> float:
        return self.lr or (1e-3 if self.mode == "head" else 1e-4)


@dataclass(frozen=True)
class RetrievalConfig(_Config):
    """How ``retrieval`` scores descriptors: precision at k and ADDR.

    Attributes
    ----------
    k : int
        Neighbours per query (from slides other than the query's).
    labels : str
        ``tissue`` (the labels the store recorded per tile, e.g. from
        GeoJSON) or a CSV file of ``tile,label``.
    queries : str
        ``auto`` (slides held out by ``fit-ssl``, else the seeded
        ``holdout`` split), ``all``, or comma-separated slide names.
    holdout : float
        Fraction of slides held out when nothing recorded says which.
    kind : {"mean", "cls"}
        Pooled vector of extracted layers.
    metric : {"euclidean", "cosine"}
    d_near, d_far, far_from
        Pairs for ADDR, as in :class:`SSLConfig`.
    far_pairs : int
        Far pairs drawn (seeded) for ADDR; near pairs are all counted.
    seed : int
    """

    k: int = 10
    labels: str = "tissue"
    queries: str = "auto"
    holdout: float = 0.25
    kind: str = "mean"
    metric: str = "euclidean"
    d_near: float = 200.0
    d_far: float = 2000.0
    far_from: str = "same"
    far_pairs: int = 20000
    seed: int = 0

    def __post_init__(self):
        _at_least(self, 1, "k", "far_pairs")
        if self.metric not in ("euclidean", "cosine"):
            raise ConfigError(f"metric must be euclidean or cosine, not {self.metric!r}")
        if self.kind not in ("mean", "cls"):
            raise ConfigError(f"kind must be mean or cls, not {self.kind!r}")
        if not 0 < self.holdout < 1:
            raise ConfigError(f"holdout must lie strictly between 0 and 1, got {self.holdout}")
        _check_pair_distances(self.d_near, self.d_far, self.far_from)


PROBE_TILE_LABELS = ("tissue", "type", "counts")
PROBE_PATCH_LABELS = ("nuclei", "type")


@dataclass(frozen=True)
class ProbeConfig(_Config):
    """How ``probe`` reads labels and features and fits linear and kNN probes.

    Attributes
    ----------
    labels : str
        Tile level: ``tissue`` (PanNuke tissue types), ``type`` (dominant
        nucleus type), ``counts`` (nuclei per type, a regression) or a CSV
        file mapping tile id to label. Patch level: ``nuclei`` (background
        vs nucleus) or ``type`` (majority nucleus type of each patch).
    level : {"tile", "patch"}
        Probe pooled vectors per tile, or every patch token.
    layers : str
        ``last``, ``all``, or layer names or indices (comma-separated).
    method : {"linear", "knn", "both"}
        kNN is tile level only.
    pooled : {"mean", "cls", "both"}
        Which pooled vector a tile-level probe reads.
    folds : int or None
        K folds over source images (stratified); None: the store's folds when
        it has several (PanNuke), else 5.
    k : int
        Neighbours of the cosine kNN.
    l2_grid : tuple of float
        L2 strengths per training row, swept on the training split:
        scikit-learn's ``C = 1 / (l2 * rows)`` (ridge: ``alpha = l2 * rows``),
        so one grid suits a hundred tiles or a hundred thousand patches.
    augment : bool
        Train tile-level probes on every variant too (tests: the identity).
    n_boot : int
        Bootstrap resamples of the test images for the 95% intervals.
    seed : int
        Seeds the folds, the inner validation split and the bootstrap.
    max_patches : int
        Patch level: training patches in all (sampled evenly over tiles).
    """

    labels: str = "tissue"
    level: str = "tile"
    layers: str = "last"
    method: str = "both"
    pooled: str = "mean"
    folds: int | None = None
    k: int = 20
    l2_grid: tuple[float, ...] = (1.0, 0.1, 0.01, 1e-3, 1e-4)
    augment: bool = False
    n_boot: int = 1000
    seed: int = 0
    max_patches: int = 200_000

    def __post_init__(self):
        object.__setattr__(self, "l2_grid", tuple(float(c) for c in self.l2_grid))
        if self.level not in ("tile", "patch"):
            raise ConfigError(f"level must be tile or patch, not {self.level!r}")
        if self.method not in ("linear", "knn", "both"):
            raise ConfigError(f"method must be linear, knn or both, not {self.method!r}")
        if self.pooled not in ("mean", "cls", "both"):
            raise ConfigError(f"pooled must be mean, cls or both, not {self.pooled!r}")
        if self.level == "patch":
            if self.labels not in PROBE_PATCH_LABELS:
                raise ConfigError(f"patch-level labels must be nuclei or type, not {self.labels!r}")
            if self.method != "linear":
                raise ConfigError("the patch-level probe is linear only; use --method linear")
        elif self.labels not in PROBE_TILE_LABELS and not self.labels.lower().endswith(".csv"):
            raise ConfigError(f"labels must be tissue, type, counts or a .csv file, not {self.labels!r}")
        if self.folds is not None and self.folds < 2:
            raise ConfigError(f"folds must be at least 2, got {self.folds}")
        _at_least(self, 1, "k", "max_patches")
        if not self.l2_grid or min(self.l2_grid) <= 0:
            raise ConfigError(f"l2_grid needs positive values, got {self.l2_grid}")
        if self.n_boot < 0:
            raise ConfigError(f"n_boot must be >= 0, got {self.n_boot}")

    @property
    def methods(self) -> tuple[str, ...]:
        return ("linear", "knn") if self.method == "both" else (self.method,)
