"""How ``fit-ssl`` learns descriptors from slides, and how ``retrieval`` scores them."""

from __future__ import annotations

from dataclasses import dataclass

from embedcache.config.base import _at_least, _Config
from embedcache.errors import ConfigError

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
    groups : str or None
        A CSV of ``slide,group`` (patient, centre): ``holdout`` is then a
        fraction of the groups, and a group's slides are all held out or
        all trained on.
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
    groups: str | None = None
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


