"""How ``probe`` reads labels and features and fits its probes."""

from __future__ import annotations

from dataclasses import dataclass

from embedcache.config.base import _at_least, _Config
from embedcache.errors import ConfigError

PROBE_TILE_LABELS = ("tissue", "type", "counts")
PROBE_PATCH_LABELS = ("nuclei", "type")
PROBE_CELL_LABELS = ("type",)
CELL_VARIANTS = ("all", "identity")


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
        Cell level: ``type`` (each nucleus's type in a cell store).
    level : {"tile", "patch", "cell"}
        Probe pooled vectors per tile, every patch token, or the per-nucleus
        vectors of cell stores (``embedcache cells``).
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
    fractions : tuple of float
        Cell level: the label-efficiency curve, the linear probe refitted on
        these fractions of each fold's training cells (seeded, every class
        kept); empty: no curve.
    pca : int or None
        Cell level: project features onto this many principal components
        (fitted on each fold's training cells) so encoders of different
        widths compare at one dimension; None: the full width.
    groups : str or None
        Cell level: a CSV of ``image,group`` (patient, centre): folds and
        resamples keep the cells of one group together; None: of one source image.
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
    fractions: tuple[float, ...] = (0.01, 0.05, 0.1, 0.25, 1.0)
    pca: int | None = None
    groups: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "l2_grid", tuple(float(c) for c in self.l2_grid))
        object.__setattr__(self, "fractions", tuple(sorted(float(f) for f in self.fractions)))
        if self.level not in ("tile", "patch", "cell"):
            raise ConfigError(f"level must be tile, patch or cell, not {self.level!r}")
        if self.method not in ("linear", "knn", "both"):
            raise ConfigError(f"method must be linear, knn or both, not {self.method!r}")
        if self.pooled not in ("mean", "cls", "both"):
            raise ConfigError(f"pooled must be mean, cls or both, not {self.pooled!r}")
        if self.level == "patch":
            if self.labels not in PROBE_PATCH_LABELS:
                raise ConfigError(f"patch-level labels must be nuclei or type, not {self.labels!r}")
            if self.method != "linear":
                raise ConfigError("the patch-level probe is linear only; use --method linear")
        elif self.level == "cell":
            if self.labels not in PROBE_CELL_LABELS:
                raise ConfigError(f"cell-level labels must be type (the nuclei's types), not {self.labels!r}")
        elif self.labels not in PROBE_TILE_LABELS and not self.labels.lower().endswith(".csv"):
            raise ConfigError(f"labels must be tissue, type, counts or a .csv file, not {self.labels!r}")
        if self.folds is not None and self.folds < 2:
            raise ConfigError(f"folds must be at least 2, got {self.folds}")
        _at_least(self, 1, "k", "max_patches")
        if not self.l2_grid or min(self.l2_grid) <= 0:
            raise ConfigError(f"l2_grid needs positive values, got {self.l2_grid}")
        if self.n_boot < 0:
            raise ConfigError(f"n_boot must be >= 0, got {self.n_boot}")
        if any(not 0 < f <= 1 for f in self.fractions):
            raise ConfigError(f"fractions must lie in (0, 1], got {self.fractions}")
        if self.pca is not None and self.pca < 1:
            raise ConfigError(f"pca must be a positive number of components, got {self.pca}")

    @property
    def methods(self) -> tuple[str, ...]:
        return ("linear", "knn") if self.method == "both" else (self.method,)


@dataclass(frozen=True)
class CellsConfig(_Config):
    """How ``cells`` finds the nuclei of a store's tiles and pools a vector for each.

    Attributes
    ----------
    nuclei : str
        ``store`` (the store's own label maps), a folder of label maps (a
        ``predict`` output, or any layout ``evaluate`` reads), a CSV of points
        (``image,x,y,label``, or ``x,y,label`` files named after the images
        in a folder) or a folder of QuPath GeoJSON point files (``NAME.geojson``).
    radius : float
        Points: the disc, in pixels, that stands for each nucleus.
    layers : str
        ``all``, ``last``, or layer names or indices (comma-separated).
    variants : {"all", "identity"}
        Pool every cached variant, or the identity only.
    unit_cells : int
        Cells per chunk of the vector arrays.
    unit_tiles : int
        Tiles pooled per unit of work (what a resumed run skips when done).
    """

    nuclei: str = "store"
    radius: float = 8.0
    layers: str = "all"
    variants: str = "all"
    unit_cells: int = 1024
    unit_tiles: int = 64

    def __post_init__(self):
        if not self.nuclei:
            raise ConfigError("nuclei must be 'store' or a path to label maps or points")
        if not self.radius > 0:
            raise ConfigError(f"radius must be positive (pixels), got {self.radius}")
        if self.variants not in CELL_VARIANTS:
            raise ConfigError(f"variants must be all or identity, not {self.variants!r}")
        _at_least(self, 1, "unit_cells", "unit_tiles")
